import tempfile
from pathlib import Path

import pandas as pd

from montessori.jobs import start_job
from montessori.launch import job_processes, run_stage

log = start_job(snakemake)
candidates = pd.read_parquet(snakemake.input.candidates)
examples = candidates[candidates["verdict"] == "ok"]
if examples.empty:
    raise SystemExit(f"{snakemake.input.candidates}: no accepted warm-up examples; raise warmup.n_examples")
cfg = snakemake.params.warmup
processes = job_processes(snakemake.resources)
with tempfile.TemporaryDirectory(prefix="montessori-warmup-") as scratch:
    # The stage's arguments travel to every rank as JSON: the examples as a file.
    examples_file = Path(scratch) / "examples.parquet"
    examples[["instruction", "response"]].to_parquet(examples_file, index=False)
    summary = run_stage(
        "warm_up",
        {
            "model_path": str(snakemake.params.student),
            "examples": str(examples_file),
            "out_dir": str(snakemake.output[0]),
            "lr": cfg["lr"],
            "weight_decay": cfg["weight_decay"],
            "epochs": cfg["epochs"],
            "batch_size": cfg["batch_size"],
            "max_length": cfg["max_length"],
            "micro_batch_size": cfg["micro_batch_size"],
            "gradient_checkpointing": cfg["gradient_checkpointing"],
            "seed": snakemake.params.seed,
            "chat_template": snakemake.params.chat_template,
        },
        processes=processes,
        threads=snakemake.threads,
        log_path=snakemake.log[0],
    )
log.info("warm-up: %s", summary)
