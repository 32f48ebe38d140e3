from montessori.aggregate import build_database
from montessori.jobs import start_job

log = start_job(snakemake)
counts = build_database(
    snakemake.params.results_dir,
    snakemake.output[0],
    data_dir=snakemake.params.data_dir,
    ngram=snakemake.params.ngram,
    threads=snakemake.threads,
)
log.info("rows per table: %s", counts)
