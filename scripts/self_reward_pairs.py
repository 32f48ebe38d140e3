import pandas as pd

from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.self_reward import require_reward_pairs, reward_pairs

log = start_job(snakemake)
candidates = pd.read_parquet(snakemake.input.candidates)
rewards = pd.read_parquet(snakemake.input.rewards)
scored = candidates.merge(rewards[["candidate_id", "reward"]], on="candidate_id", how="inner")
pairs = reward_pairs(scored)
require_reward_pairs(pairs, scored, where=snakemake.output[0])
write_parquet(pairs, snakemake.output[0])
log.info("%d pairs from %d prompts", len(pairs), scored["prompt_id"].nunique())
