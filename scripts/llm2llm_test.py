import pandas as pd

from montessori.generate import load_configured_generator
from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.judges import judge_config
from montessori.judges.first_token import first_token_probabilities
from montessori.launch import tensor_parallel_size
from montessori.llm2llm import CORRECT, INCORRECT, grade_messages, grading_frame, student_answers

log = start_job(snakemake)
iteration = int(snakemake.wildcards.iteration)
seed_set = pd.read_parquet(snakemake.input.seed_set)
generation = snakemake.params.generation
gpus = tensor_parallel_size(snakemake.resources)
student = load_configured_generator(
    snakemake.params.student, generation, chat_template=snakemake.params.chat_template, role="student",
    tensor_parallel_size=gpus,
)  # fmt: skip
answers = student_answers(student, seed_set, snakemake.params.max_tokens, generation["seed"])
student.close()
conversations = [
    grade_messages(snakemake.params.prompt, row.instruction, row.response, answer.text.strip())
    for row, answer in zip(seed_set.itertuples(), answers)
]
# A remote judge's answers go to the judge cache as they arrive: a rerun pays only for the missing ones.
probabilities, texts, judge = first_token_probabilities(
    judge_config(snakemake.params.judge), conversations, (CORRECT, INCORRECT), snakemake.params.cache,
    f"llm2llm_test-iter{iteration}", gpus,
)  # fmt: skip
tests = grading_frame(seed_set, answers, probabilities, texts, iteration, judge, snakemake.params.pass_threshold)
write_parquet(tests, snakemake.output[0])
log.info(
    "round %d: the student failed %d of %d seed examples (verdicts %s)",
    iteration, int(tests["failed"].sum()), len(tests), tests["verdict"].value_counts(dropna=False).to_dict(),
)  # fmt: skip
