from montessori.benchmarks.mt_bench import run_mt_bench
from montessori.evaluate import eval_record
from montessori.generate import load_configured_generator
from montessori.io import write_json
from montessori.jobs import start_job
from montessori.judges import judge_config, open_judge
from montessori.launch import tensor_parallel_size

log = start_job(snakemake)
generation = snakemake.params.generation
generator = load_configured_generator(
    snakemake.params.model,
    generation,
    snakemake.params.backend,
    snakemake.params.batch_size,
    chat_template=snakemake.params.chat_template,
    role="student",
    tensor_parallel_size=tensor_parallel_size(snakemake.resources),
)
judge_settings = judge_config(snakemake.params.judge)
# The job's label names its file in the cache directory; a random suffix keeps every process's file its own.
# A local vLLM judge spreads over the job's GPUs.
gpus = tensor_parallel_size(snakemake.resources)
writer = f"mt_bench-{snakemake.wildcards.method}"
with open_judge(judge_settings, snakemake.params.cache, writer=writer, tensor_parallel_size=gpus) as judge:
    result = run_mt_bench(
        generator, judge, limit=snakemake.params.limit, max_tokens=snakemake.params.max_tokens,
        seed=generation["seed"],
    )  # fmt: skip
generator.close()
record = eval_record(snakemake.wildcards.method, result, snakemake.params.limit)
write_json(record, snakemake.output[0])
log.info("%s mt_bench: %s", snakemake.wildcards.method, record["scores"])
