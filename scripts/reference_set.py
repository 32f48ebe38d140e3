from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.pool import reference_set

log = start_job(snakemake)
reference = reference_set(snakemake.input[0], snakemake.params.n)
write_parquet(reference, snakemake.output[0])
log.info("%d reference examples from %s", len(reference), snakemake.input[0])
