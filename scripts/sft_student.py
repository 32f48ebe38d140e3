import pandas as pd

from montessori.jobs import start_job
from montessori.sft import train_student

log = start_job(snakemake)
cfg = snakemake.params.sft
train_student(
    snakemake.params.student,
    pd.read_parquet(snakemake.input.train),
    snakemake.output[0],
    lr=cfg["lr"],
    epochs=cfg["epochs"],
    batch_size=cfg["batch_size"],
    micro_batch_size=cfg["micro_batch_size"],
    max_length=cfg["max_length"],
    schedule=cfg["schedule"],
    seed=snakemake.params.seed,
    precision=cfg["precision"],
    chat_template=snakemake.params.chat_template,
)
