"""Each job's GPUs and processes as Snakemake plans them and as Slurm would get them; DPO and SFT in 2 processes
through their rules."""

import pytest
import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm_jobstep import get_gpu_setting, get_node_setting
from transformers import AutoModelForCausalLM

from tests.conftest import ROOT, TOY_EXAMPLES, make_workdir, run_snakemake
from tests.test_dpo import fake_pairs
from tests.test_pipeline import snakemake

SLURM = ("--profile", "profiles/slurm", "--sdm", "env-modules")
# The counts configs/paper*.yaml set (their comments hold the plan's arithmetic), written out so that a change to
# one shows here.
PAPER_GPUS = {
    "configs/paper.yaml": {
        "synthesize_warmup": 1, "synthesize_iteration": 1, "synthesize_final": 1, "warmup_student": 8,
        "influence_shard": 8, "dpo_teacher": 2, "sft_student": 4, "lm_eval": 1, "alpaca_eval_outputs": 1,
        "mt_bench": 1, "alpaca_eval": 0, "self_reward_judge": 1, "llm2llm_test": 1, "llm2llm_augment": 1,
    },
    "configs/paper_1b.yaml": {
        "synthesize_warmup": 1, "synthesize_iteration": 1, "synthesize_final": 1, "warmup_student": 1,
        "influence_shard": 1, "dpo_teacher": 2, "sft_student": 1, "lm_eval": 1, "alpaca_eval_outputs": 1,
        "mt_bench": 1, "alpaca_eval": 0, "self_reward_judge": 1, "llm2llm_test": 1, "llm2llm_augment": 1,
    },
}  # fmt: skip


class Resources(dict):
    """A job's resources as the Slurm plugin reads them: `.get(name)` and `.name`."""

    __getattr__ = dict.__getitem__


class PlannedJob:
    def __init__(self, rule: str, resources: dict, threads: int):
        self.name, self.resources, self.threads = rule, Resources(resources), threads


def _value(text: str):
    return int(text) if text.isdigit() else text


def planned_resources(*args: str) -> dict[str, list[dict]]:
    """Rule -> the resources of each of its jobs, as `snakemake -n` prints them."""
    out = snakemake("-n", *args).stdout
    jobs: dict[str, list[dict]] = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        line = next(line for line in block.splitlines() if line.strip().startswith("resources: "))
        pairs = (item.split("=", 1) for item in line.strip().removeprefix("resources: ").split(", "))
        jobs.setdefault(rule, []).append({key: _value(value) for key, value in pairs})
    return jobs


@pytest.fixture(scope="module")
def paper_jobs() -> dict[str, dict[str, list[dict]]]:
    return {
        configfile: planned_resources(*SLURM, "--configfile", configfile, "--config", f"experiment=dryrun-gpus-{i}")
        for i, configfile in enumerate(PAPER_GPUS)
    }


@pytest.mark.parametrize("configfile", list(PAPER_GPUS))
def test_a_dry_run_shows_each_rules_gpus_from_the_config(paper_jobs, configfile):
    jobs = paper_jobs[configfile]
    config = yaml.safe_load((ROOT / configfile).read_text())
    assert config["gpus"] == PAPER_GPUS[configfile]
    # The rules `use rule ... as` derives from a GPU rule hold its count; the strong teacher is an API (no GPU).
    derived = {"synthesize_self_reward_iteration": "synthesize_iteration", "dpo_self_reward_teacher": "dpo_teacher"}
    counts = {**PAPER_GPUS[configfile], **{new: config["gpus"][old] for new, old in derived.items()}}
    counts["synthesize_strong_teacher"] = 0
    for rule, gpus in counts.items():
        assert jobs[rule], rule
        assert {job["gpu"] for job in jobs[rule]} == {gpus}, rule
        # Every GPU job runs on the GPU partition, as one task on one node (the profile's site settings).
        assert all(job["nodes"] == 1 and job["tasks_per_gpu"] == 0 for job in jobs[rule]), rule
        if gpus:
            assert {job["slurm_partition"] for job in jobs[rule]} == {"gpu"}, rule


def sbatch_call(rule: str, resources: dict, threads: int = 8) -> str:
    """The sbatch command line snakemake-executor-plugin-slurm builds for a job (its own functions)."""
    job = PlannedJob(rule, resources, threads)
    params = {
        "run_uuid": "run-id", "slurm_logfile": "/tmp/slurm.log", "comment_str": f"rule_{rule}", "account": "",
        "partition": f"-p {resources['slurm_partition']}", "workdir": str(ROOT),
    }  # fmt: skip
    return get_submit_command(job, params) + set_gres_string(job)


def test_a_job_of_g_gpus_is_one_slurm_task_with_g_gpus_on_one_node(paper_jobs):
    shard = paper_jobs["configs/paper.yaml"]["influence_shard"][0]
    call = sbatch_call("influence_shard", shard)
    assert "--gpus=8" in call.split() and "--nodes=1" in call.split() and "--cpus-per-task=8" in call.split()
    # No task count: Slurm's default of one task, which runs the job's own torchrun (or vLLM) over the 8 GPUs.
    assert "--ntasks" not in call
    # Inside the allocation the job step is `srun -n1` with all of them.
    job = PlannedJob("influence_shard", shard, 8)
    assert (get_gpu_setting(job), get_node_setting(job)) == ("--gpus=8", "--nodes=1")
    # Without the profile's tasks_per_gpu the plugin would ask for a task per GPU (8 tasks, any nodes).
    plain = {key: value for key, value in shard.items() if key not in ("tasks_per_gpu", "nodes")}
    assert "--ntasks-per-gpu=1" in sbatch_call("influence_shard", plain) and "--nodes" not in sbatch_call("x", plain)
    # A job without GPUs (a judge behind an API) gets one plain task.
    judge = paper_jobs["configs/paper.yaml"]["alpaca_eval"][0]
    assert "--ntasks=1" in sbatch_call("alpaca_eval", judge) and "--gpus" not in sbatch_call("alpaca_eval", judge)


def test_cpu_processes_reach_the_dpo_and_sft_jobs():
    jobs = planned_resources(
        "--config", "experiment=dryrun-cpu-processes",
        "--set-resources", "dpo_teacher:cpu_processes=2", "sft_student:cpu_processes=2",
    )  # fmt: skip
    for rule in ("dpo_teacher", "sft_student"):
        assert jobs[rule] and all(job["cpu_processes"] == 2 for job in jobs[rule]), rule
    assert all("cpu_processes" not in job for job in jobs["warmup_student"])


def test_a_gpu_count_that_splits_no_batch_fails_before_any_job(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    config["gpus"]["dpo_teacher"] = 4
    configfile = tmp_path / "paper-dpo4.yaml"
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(configfile), check=False)
    assert result.returncode != 0
    assert "gpus.dpo_teacher = 4: the effective batch (dpo.batch_size x dpo.gradient_accumulation = 2)" in (
        result.stdout + result.stderr
    )


def test_two_process_dpo_and_sft_through_their_rules(tiny_model_dir, tmp_path):
    """The rules with `cpu_processes=2` (what `gpu=2` is on a GPU node): both jobs run 2 ranks over gloo, each
    rank's output lands in the job's log, and the teacher and student load. ~1.5 min here."""
    experiment = "test-2proc"
    workdir = make_workdir(tmp_path / "work")
    results = workdir / "results" / experiment
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["experiment"] = experiment
    config["models"] = {"teacher": "tiny-random-llama", "student": "tiny-random-llama"}
    # The effective DPO batch of 2 pairs, one per rank.
    config["dpo"] = {**config.get("dpo", {}), "batch_size": 1, "gradient_accumulation": 2, "max_length": 64}
    config["sft"] = {**config["sft"], "max_length": 64}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    (results / "iter1").mkdir(parents=True)
    (results / "final" / "self_instruct").mkdir(parents=True)
    fake_pairs(4).to_parquet(results / "iter1" / "pairs.parquet")
    TOY_EXAMPLES.to_parquet(results / "final" / "self_instruct" / "train.parquet")
    teacher, student = results / "iter1" / "teacher", results / "final" / "self_instruct" / "student"
    run_snakemake(
        workdir, str(teacher.relative_to(workdir)), str(student.relative_to(workdir)), "--cores", "2",
        "--configfile", str(configfile),
        "--set-resources", "dpo_teacher:cpu_processes=2", "sft_student:cpu_processes=2",
    )  # fmt: skip
    for model, log in ((teacher, "dpo_teacher/iter1.log"), (student, "sft_student/self_instruct.log")):
        text = (results / "logs" / log).read_text()
        assert "in 2 processes" in text and "[default0]:" in text and "[default1]:" in text
        assert "'processes': 2" in text
        assert AutoModelForCausalLM.from_pretrained(model).num_parameters() == (
            AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
        )
