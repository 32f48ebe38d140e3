from montessori.evaluate import answer_alpaca_eval
from montessori.generate import load_configured_generator
from montessori.io import write_json
from montessori.jobs import start_job

log = start_job(snakemake)
generation = snakemake.params.generation
generator = load_configured_generator(
    snakemake.params.model,
    generation,
    snakemake.params.backend,
    snakemake.params.batch_size,
    chat_template=snakemake.params.chat_template,
    role="student",
)
outputs = answer_alpaca_eval(generator, snakemake.wildcards.method, snakemake.params.limit, snakemake.params.max_tokens)
generator.close()
write_json(outputs, snakemake.output[0])
log.info("%d AlpacaEval answers", len(outputs))
