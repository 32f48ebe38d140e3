import tempfile
from pathlib import Path

import pandas as pd

from montessori.influence_modes import check_processes
from montessori.jobs import job_progress_spec, start_job
from montessori.launch import job_processes, run_stage
from montessori.pairs import pairable
from montessori.shards import shard_of

log = start_job(snakemake)
# Snakemake numbers scatter items 1..N; shard_of counts from 0.
shard, n_shards = (int(x) for x in snakemake.wildcards.scatteritem.split("-of-"))
cfg = snakemake.params.influence
processes = job_processes(snakemake.resources)
try:
    check_processes(cfg["mode"], processes)  # before any model is loaded
except ValueError as e:
    raise SystemExit(str(e)) from None
candidates = pd.read_parquet(snakemake.input.candidates)
# A candidate alone on its prompt cannot form a pair: its influence is not measured.
candidates = shard_of(pairable(candidates), shard - 1, n_shards)
log.info("shard %d of %d: %d candidates, mode %s", shard, n_shards, len(candidates), cfg["mode"])
student = Path(snakemake.input.student)
with tempfile.TemporaryDirectory(prefix="montessori-influence-") as scratch:
    # The stage's arguments travel to every rank as JSON: the shard's candidates as a file.
    candidates_file = Path(scratch) / "candidates.parquet"
    candidates.to_parquet(candidates_file, index=False)
    summary = run_stage(
        "influence_shard",
        {
            "candidates": str(candidates_file),
            "model_dir": str(student / "model"),
            "optimizer_path": str(student / "optimizer.pt"),
            "references": str(snakemake.input.reference),
            "cfg": dict(cfg),
            "seed": snakemake.params.seed,
            "shard": shard,
            "out": str(snakemake.output[0]),
            # Scores saved as the shard goes: a rerun after a kill computes only the missing ones.
            "progress": job_progress_spec(snakemake),
        },
        processes=processes,
        threads=snakemake.threads,
        log_path=snakemake.log[0],
    )
log.info("influence shard: %s", summary)
