import pandas as pd

from montessori.io import write_parquet
from montessori.jobs import start_job
from montessori.judges import judge_config
from montessori.judges.first_token import first_token_probabilities
from montessori.launch import tensor_parallel_size
from montessori.pairs import pairable
from montessori.self_reward import SCORES, judge_messages, reward_frame

log = start_job(snakemake)
# As for influence: only the usable candidates of prompts with two or more of them can form a pair.
candidates = pairable(pd.read_parquet(snakemake.input.candidates))
conversations = [
    judge_messages(snakemake.params.prompt, row.instruction, row.response) for row in candidates.itertuples()
]
writer = f"self_reward_judge-iter{snakemake.wildcards.iteration}"
probabilities, texts, judge = first_token_probabilities(
    judge_config(snakemake.params.judge), conversations, SCORES, snakemake.params.cache, writer,
    tensor_parallel_size(snakemake.resources),
)  # fmt: skip
rewards = reward_frame(candidates, probabilities, texts, judge)
write_parquet(rewards, snakemake.output[0])
log.info(
    "%d candidates judged by %s; rewards: mean %.3f, %d distinct, %d NaN",
    len(rewards), judge, rewards["reward"].mean(), rewards["reward"].nunique(), int(rewards["reward"].isna().sum()),
)  # fmt: skip
