from pathlib import Path

import pandas as pd

from montessori.influence_modes import score_shard
from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.pairs import pairable
from montessori.shards import shard_of

log = start_job(snakemake)
# Snakemake numbers scatter items 1..N; shard_of counts from 0.
shard, n_shards = (int(x) for x in snakemake.wildcards.scatteritem.split("-of-"))
cfg = snakemake.params.influence
candidates = pd.read_parquet(snakemake.input.candidates)
# A candidate alone on its prompt cannot form a pair: its influence is not measured.
candidates = shard_of(pairable(candidates), shard - 1, n_shards)
log.info("shard %d of %d: %d candidates, mode %s", shard, n_shards, len(candidates), cfg["mode"])
student = Path(snakemake.input.student)
scores = score_shard(
    candidates,
    student / "model",
    student / "optimizer.pt",
    pd.read_parquet(snakemake.input.reference),
    cfg,
    seed=snakemake.params.seed,
    shard=shard,
)
scores["shard"] = shard
write_parquet(scores, snakemake.output[0])
