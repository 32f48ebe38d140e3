# Montessori-Instruct (ICLR 2025) as a data-lineage pipeline. Read top to bottom, the includes are the paper's
# figure: seeds -> teacher synthesis -> student warm-up -> local influence -> preference pairs -> teacher DPO,
# iterated; then each method's teacher writes its final training set, a student learns from it, and the
# benchmarks score every student.
import os
import sys

# The library is importable from the checkout itself, in this process and in every job (also in conda envs
# and on cluster nodes, which inherit the environment), without installing the project into each env.
sys.path.insert(0, workflow.basedir)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))

from montessori.config import validate_config

# The embedded default, unless config files are given: `--configfile configs/paper.yaml` replaces it instead of
# merging into it, so keys a config leaves out take the schema's defaults (the paper's numbers), never the
# laptop sizes of config.yaml. `--config KEY=VALUE` still applies on top of either. The embedded default is the
# checkout's own, also when Snakemake runs in another working directory (`--directory`).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


# Fills the schema's defaults in place and fails before any job runs, naming the bad key.
validate_config(config)


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/pool.smk"
include: "rules/synthesize.smk"
include: "rules/warmup.smk"
include: "rules/influence.smk"
include: "rules/pairs.smk"
include: "rules/dpo.smk"
include: "rules/sft.smk"
# The paper's other baselines, each a value of the method wildcard beside self_instruct and montessori.
include: "rules/strong_teacher.smk"
include: "rules/self_reward.smk"
include: "rules/llm2llm.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


# Short pandas/matplotlib jobs run in the Snakemake process itself under a cluster executor, not as Slurm jobs:
# each reads and writes a few small tables in seconds, where a Slurm job waits in the queue, pays Snakemake's
# start-up in the job and the status polling (tens of seconds each, on the teacher loop's critical path for
# gather_influence and pairs). Locally nothing changes. aggregate stays a job: its contamination check indexes
# every benchmark's n-grams against all training sets (4 GB, 30 min allowed), not a login node's work.
localrules:
    pool_seeds,
    reference_set,
    snapshot_config,
    gather_influence,
    pairs,
    self_reward_pairs,
    llm2llm_train_set,
    plots,
    table1,


rule all:
    input:
        f"{RESULTS}/config.yaml",
        expand(f"{RESULTS}/final/{{method}}/train.parquet", method=config["final"]["methods"]),
        eval_targets(),
        REPORT_TARGETS,
