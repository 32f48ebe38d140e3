import pandas as pd

from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.llm2llm import grown_set
from montessori.synthesize import TRAINING_COLUMNS

log = start_job(snakemake)
previous = pd.read_parquet(snakemake.input.previous)
train = grown_set(previous, pd.read_parquet(snakemake.input.candidates), TRAINING_COLUMNS)
write_parquet(train, snakemake.output[0])
log.info("%s: %d examples (%d new)", snakemake.wildcards.method, len(train), len(train) - len(previous))
