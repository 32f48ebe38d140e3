import pandas as pd

from montessori.benchmarks.alpaca_eval import load_outputs, run_alpaca_eval, selected_items
from montessori.evaluate import eval_record
from montessori.io import write_json
from montessori.jobs import start_job
from montessori.judges import judge_config, open_judge
from montessori.launch import tensor_parallel_size

log = start_job(snakemake)
method, items = snakemake.wildcards.method, snakemake.params.alpaca_eval_items
outputs, reference = load_outputs(snakemake.input.outputs), load_outputs(snakemake.input.reference)
if snakemake.input.outputs == snakemake.input.reference:
    # The Self-Instruct student against itself: alpaca-eval scores identical outputs as ties (50%) without
    # asking the judge, but it needs two generator names.
    reference = [{**r, "generator": f"{r['generator']} (reference)"} for r in reference]
reference_set = pd.read_parquet(snakemake.input.reference_set)["instruction"].tolist()
selected, _ = selected_items(reference_set, items["subset"], items["limit"], items["seed"])
judge_settings = judge_config(snakemake.params.judge)
# The job's label names its file in the cache directory; a random suffix keeps every process's file its own.
# A local vLLM judge spreads over the job's GPUs.
gpus = tensor_parallel_size(snakemake.resources)
writer = f"alpaca_eval-{method}"
with open_judge(judge_settings, snakemake.params.cache, writer=writer, tensor_parallel_size=gpus) as judge:
    result = run_alpaca_eval(outputs, reference, judge, selected)
record = eval_record(method, result, items["limit"])
write_json(record, snakemake.output[0])
log.info("%s alpaca_eval (%s): %s", method, ", ".join(selected), record["scores"])
