import pandas as pd

from montessori.jobs import start_job
from montessori.student import warm_up

log = start_job(snakemake)
candidates = pd.read_parquet(snakemake.input.candidates)
examples = candidates[candidates["verdict"] == "ok"]
if examples.empty:
    raise SystemExit(f"{snakemake.input.candidates}: no accepted warm-up examples; raise warmup.n_examples")
cfg = snakemake.params.warmup
summary = warm_up(
    snakemake.params.student,
    examples,
    snakemake.output[0],
    lr=cfg["lr"],
    weight_decay=cfg["weight_decay"],
    epochs=cfg["epochs"],
    batch_size=cfg["batch_size"],
    max_length=cfg["max_length"],
    seed=snakemake.params.seed,
    chat_template=snakemake.params.chat_template,
)
log.info("warm-up: %s", summary)
