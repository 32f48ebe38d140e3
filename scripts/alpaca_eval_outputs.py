import pandas as pd

from montessori.benchmarks.alpaca_eval import selected_items
from montessori.evaluate import answer_alpaca_eval
from montessori.generate import load_configured_generator
from montessori.io import write_json
from montessori.jobs import start_job
from montessori.launch import tensor_parallel_size

log = start_job(snakemake)
items = snakemake.params.alpaca_eval_items
reference_set = pd.read_parquet(snakemake.input.reference_set)["instruction"].tolist()
selected, instructions = selected_items(reference_set, items["subset"], items["limit"], items["seed"])
log.info("AlpacaEval items: %s", {subset: len(indices) for subset, indices in selected.items()})
generator = load_configured_generator(
    snakemake.params.model,
    snakemake.params.generation,
    snakemake.params.backend,
    snakemake.params.batch_size,
    chat_template=snakemake.params.chat_template,
    role="student",
    tensor_parallel_size=tensor_parallel_size(snakemake.resources),
)
outputs = answer_alpaca_eval(generator, snakemake.wildcards.method, instructions, snakemake.params.max_tokens)
generator.close()
write_json(outputs, snakemake.output[0])
log.info("%d AlpacaEval answers", len(outputs))
