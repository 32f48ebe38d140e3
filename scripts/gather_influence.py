import pandas as pd

from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.shards import gather

log = start_job(snakemake)
influence = gather([pd.read_parquet(path) for path in snakemake.input])
write_parquet(influence, snakemake.output[0])
log.info(
    "%d candidates: %d positive, %d negative", len(influence), (influence["influence"] > 0).sum(),
    (influence["influence"] < 0).sum(),
)  # fmt: skip
