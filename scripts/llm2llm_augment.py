import pandas as pd

from montessori.generate import load_configured_generator
from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.launch import tensor_parallel_size
from montessori.llm2llm import augment
from montessori.prompts import TeacherPrompt

log = start_job(snakemake)
iteration = int(snakemake.wildcards.iteration)
tests = pd.read_parquet(snakemake.input.tests)
# The failed examples with their lineage (the seeds their own teacher prompt showed).
seed_set = pd.read_parquet(snakemake.input.seed_set)
failed = tests.loc[tests["failed"], ["candidate_id", "instruction"]].merge(
    seed_set[["candidate_id", "seed_ids"]], on="candidate_id", how="left"
)
generation = snakemake.params.generation
teacher = load_configured_generator(
    snakemake.params.teacher, generation, chat_template=snakemake.params.chat_template, role="teacher",
    tensor_parallel_size=tensor_parallel_size(snakemake.resources),
)  # fmt: skip
candidates = augment(
    teacher, failed, pd.read_parquet(snakemake.input.previous), TeacherPrompt(**snakemake.params.prompt),
    snakemake.params.synthesis, iteration, generation["batch_size"], generation["seed"],
)  # fmt: skip
teacher.close()
write_parquet(candidates, snakemake.output[0])
log.info(
    "round %d: %d failed examples, %d new examples usable (verdicts %s)",
    iteration, len(failed), int((candidates["verdict"] == "ok").sum()), candidates["verdict"].value_counts().to_dict(),
)  # fmt: skip
