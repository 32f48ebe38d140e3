import pandas as pd

from montessori.api_teacher import APIGenerator
from montessori.generate import load_configured_generator
from montessori.io import write_parquet
from montessori.jobs import job_progress, start_job
from montessori.launch import tensor_parallel_size
from montessori.prompts import TeacherPrompt
from montessori.synthesize import SynthesisPlan, synthesize, training_set

log = start_job(snakemake)
params = snakemake.params.synthesis
generation = params["generation"]
plan = SynthesisPlan(
    stage=params["stage"],
    iteration=snakemake.params.iteration,
    candidates_per_prompt=params["candidates_per_prompt"],
    n_prompts=params["n_prompts"],
    n_examples=params["n_examples"],
    max_prompts_factor=params["synthesis"]["max_prompts_factor"],
)
seeds = pd.read_parquet(snakemake.input.seeds)
if isinstance(snakemake.params.teacher, dict):
    # strong_teacher: an OpenAI-compatible endpoint, its completions cached per request.
    generator = APIGenerator(
        **snakemake.params.teacher, cache_dir=snakemake.params.request_cache, writer=f"{snakemake.rule}-{plan.stage}"
    )
else:
    generator = load_configured_generator(
        snakemake.params.teacher,
        generation,
        chat_template=params["chat_template"],
        role="teacher",
        tensor_parallel_size=tensor_parallel_size(snakemake.resources),
    )
# Each finished round is saved: a rerun after the job was killed replays the saved rounds and asks the teacher
# only for the rest (montessori.progress).
progress = job_progress(snakemake)
candidates = synthesize(
    generator, seeds, plan, params["synthesis"], TeacherPrompt(**params["prompt"]), generation["batch_size"],
    generation["seed"], after_round=progress.append, done_rounds=progress.steps,
)  # fmt: skip
generator.close()
if "train" in snakemake.output.keys():
    # Methods are compared on sets of one size: a short final set fails here, before anything is written.
    train = training_set(candidates, plan.n_examples, where=snakemake.output.train)
    write_parquet(train, snakemake.output.train)
    log.info("training set: %d examples", len(train))
write_parquet(candidates, snakemake.output[0])
progress.remove()
