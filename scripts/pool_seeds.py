from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.pool import pool_seeds

log = start_job(snakemake)
seeds = pool_seeds(list(snakemake.input), seed=snakemake.params.seed)
write_parquet(seeds, snakemake.output[0])
log.info("%d seeds pooled from %s", len(seeds), ", ".join(snakemake.input))
