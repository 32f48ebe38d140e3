from montessori.benchmarks.lm_eval_tasks import run_benchmark
from montessori.evaluate import eval_record
from montessori.io import write_json
from montessori.jobs import start_job
from montessori.launch import tensor_parallel_size

log = start_job(snakemake)
result = run_benchmark(
    snakemake.params.model,
    snakemake.wildcards.benchmark,
    num_fewshot=snakemake.params.num_fewshot,
    limit=snakemake.params.limit,
    source=snakemake.params.source,
    backend=snakemake.params.backend,
    batch_size=snakemake.params.batch_size,
    dtype=snakemake.params.generation["dtype"],
    vllm_kv_cache_gib=snakemake.params.generation["vllm_kv_cache_gib"],
    tensor_parallel_size=tensor_parallel_size(snakemake.resources),
)
record = eval_record(snakemake.wildcards.method, result, snakemake.params.limit)
write_json(record, snakemake.output[0])
log.info("%s %s: %s", snakemake.wildcards.method, snakemake.wildcards.benchmark, record["scores"])
