import pandas as pd

from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.pairs import make_pairs, require_pairs

log = start_job(snakemake)
candidates = pd.read_parquet(snakemake.input.candidates)
influence = pd.read_parquet(snakemake.input.influence)
scored = candidates.merge(influence[["candidate_id", "influence"]], on="candidate_id", how="inner")
pairs = make_pairs(scored)
require_pairs(pairs, scored, where=snakemake.output[0])
write_parquet(pairs, snakemake.output[0])
log.info("%d pairs from %d prompts", len(pairs), pairs["prompt_id"].nunique())
