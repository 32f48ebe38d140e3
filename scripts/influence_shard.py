from pathlib import Path

import pandas as pd

from montessori.influence import InfluenceEngine
from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.shards import shard_of

log = start_job(snakemake)
# Snakemake numbers scatter items 1..N; shard_of counts from 0.
shard, n_shards = (int(x) for x in snakemake.wildcards.scatteritem.split("-of-"))
cfg = snakemake.params.influence
candidates = pd.read_parquet(snakemake.input.candidates)
candidates = shard_of(candidates[candidates["verdict"] == "ok"], shard - 1, n_shards)
log.info("shard %d of %d: %d candidates", shard, n_shards, len(candidates))
student = Path(snakemake.input.student)
engine = InfluenceEngine(
    student / "model",
    student / "optimizer.pt",
    pd.read_parquet(snakemake.input.reference),
    max_length=cfg["max_length"],
    reference_batch_size=cfg["reference_batch_size"],
)
scores = engine.score(candidates, baseline=cfg["baseline"])
scores["shard"] = shard
write_parquet(scores, snakemake.output[0])
