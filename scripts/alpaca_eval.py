from montessori.benchmarks.alpaca_eval import load_outputs, run_alpaca_eval
from montessori.evaluate import eval_record
from montessori.io import write_json
from montessori.jobs import start_job
from montessori.judges import judge_config, open_judge

log = start_job(snakemake)
method = snakemake.wildcards.method
outputs, reference = load_outputs(snakemake.input.outputs), load_outputs(snakemake.input.reference)
if snakemake.input.outputs == snakemake.input.reference:
    # The Self-Instruct student against itself: alpaca-eval scores identical outputs as ties (50%) without
    # asking the judge, but it needs two generator names.
    reference = [{**r, "generator": f"{r['generator']} (reference)"} for r in reference]
judge_settings = judge_config(snakemake.params.judge)
# The job's label names its file in the cache directory; a random suffix keeps every process's file its own.
with open_judge(judge_settings, snakemake.params.cache, writer=f"alpaca_eval-{method}") as judge:
    result = run_alpaca_eval(outputs, reference, judge, limit=snakemake.params.limit)
record = eval_record(method, result, snakemake.params.limit)
write_json(record, snakemake.output[0])
log.info("%s alpaca_eval: %s", method, record["scores"])
