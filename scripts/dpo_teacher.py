import pandas as pd

from montessori.dpo import train_teacher
from montessori.jobs import start_job

log = start_job(snakemake)
cfg = snakemake.params.dpo
summary = train_teacher(
    snakemake.params.teacher,
    pd.read_parquet(snakemake.input.pairs),
    snakemake.output[0],
    beta=cfg["beta"],
    lr=cfg["lr"],
    batch_size=cfg["batch_size"],
    gradient_accumulation=cfg["gradient_accumulation"],
    epochs=cfg["epochs"],
    max_length=cfg["max_length"],
    schedule=cfg["schedule"],
    lora=cfg["lora"],
    seed=snakemake.params.seed,
    precision=cfg["precision"],
    chat_template=snakemake.params.chat_template,
)
log.info("teacher DPO: %s", summary)
