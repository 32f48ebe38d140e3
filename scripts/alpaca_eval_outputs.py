from montessori.evaluate import answer_alpaca_eval
from montessori.generate import load_generator
from montessori.io import write_json
from montessori.jobs import start_job

log = start_job(snakemake)
generation = snakemake.params.generation
generator = load_generator(
    snakemake.params.model,
    backend=snakemake.params.eval["backend"],
    batch_size=snakemake.params.eval["batch_size"],
    dtype=generation["dtype"],
    vllm_kv_cache_gib=generation["vllm_kv_cache_gib"],
    vllm_gpu_memory_utilization=generation["vllm_gpu_memory_utilization"],
    seed=generation["seed"],
)
outputs = answer_alpaca_eval(generator, snakemake.wildcards.method, snakemake.params.limit, snakemake.params.max_tokens)
generator.close()
write_json(outputs, snakemake.output[0])
log.info("%d AlpacaEval answers", len(outputs))
