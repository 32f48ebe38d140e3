"""Self-Reward (Yuan et al., 2024, "Self-Rewarding Language Models") as a baseline teacher loop.

The loop is Montessori's with one change: instead of measuring each candidate's influence on the student, the
teacher judges its own candidates (instruction and answer) as an LLM judge, with an additive rubric of five
criteria (prompts/self_reward/judge.txt). Within each teacher prompt, the candidate with the highest reward is
chosen and the one with the lowest rejected (Self-Rewarding's pairing; a prompt whose rewards all tie gives no
pair). DPO then trains the teacher on the same raw outputs as Montessori's pairs, and the next iteration's
candidates come from the updated teacher.

Where Self-Rewarding has the judge write a justification, end with "Score: N" and averages three sampled
judgments, the judge here answers with the total alone and the reward is the expected total under the judge's
probabilities of the digits 0-5 as the first token of its reply (montessori.judges.first_token): deterministic,
continuous (few ties), and usable even from a small teacher that never writes "Score: N" (SmolLM2-135M does not).
A candidate without any digit probability (a remote judge that reported none among its top alternatives) has
reward NaN and takes no side.
"""

from __future__ import annotations

import json
import logging
import math

import pandas as pd

from montessori.pairs import NoPairsError, pair_id

log = logging.getLogger(__name__)

INSTRUCTION_SLOT, RESPONSE_SLOT = "{instruction}", "{response}"
SCORES = ("0", "1", "2", "3", "4", "5")
REWARD_COLUMNS = ["candidate_id", "prompt_id", "iteration", "reward", "score_probabilities", "judgment", "judge"]
PAIR_COLUMNS = [
    "pair_id", "prompt_id", "iteration", "prompt", "chosen", "rejected", "chosen_candidate_id",
    "rejected_candidate_id", "chosen_reward", "rejected_reward",
]  # fmt: skip


def judge_messages(template: str, instruction: str, response: str) -> list[dict[str, str]]:
    text = template.replace(INSTRUCTION_SLOT, instruction).replace(RESPONSE_SLOT, response)
    return [{"role": "user", "content": text}]


def expected_reward(probabilities: dict[str, float]) -> float:
    """The expected rubric total under the judge's (normalised) probabilities of the digits; NaN without any."""
    return sum(int(score) * p for score, p in probabilities.items()) if probabilities else math.nan


def reward_frame(
    candidates: pd.DataFrame, probabilities: list[dict[str, float]], texts: list[str], judge: str
) -> pd.DataFrame:
    """REWARD_COLUMNS for `candidates`, judged in order by `judge` (its identity): the reward, the digits'
    probabilities (JSON) and the judge's first token."""
    return pd.DataFrame(
        {
            "candidate_id": candidates["candidate_id"].to_numpy(),
            "prompt_id": candidates["prompt_id"].to_numpy(),
            "iteration": candidates["iteration"].astype("int64").to_numpy(),
            "reward": [expected_reward(p) for p in probabilities],
            "score_probabilities": [json.dumps(p, sort_keys=True) for p in probabilities],
            "judgment": texts,
            "judge": judge,
        },
        columns=REWARD_COLUMNS,
    )


def reward_pairs(scored: pd.DataFrame) -> pd.DataFrame:
    """Per prompt, the highest-rewarded candidate against the lowest (ties broken by candidate id); none where
    every reward of the prompt ties or fewer than two have one. `scored`: candidates with a `reward` column."""
    rows = []
    for prompt_id, group in scored.dropna(subset=["reward"]).groupby("prompt_id", sort=True):
        ranked = group.sort_values(["reward", "candidate_id"], ascending=[False, True], kind="stable")
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        if best["reward"] == worst["reward"]:
            continue
        rows.append({
            "pair_id": pair_id(best["candidate_id"], worst["candidate_id"]),
            "prompt_id": prompt_id,
            "iteration": int(best["iteration"]),
            "prompt": best["prompt"],
            "chosen": best["raw_output"],
            "rejected": worst["raw_output"],
            "chosen_candidate_id": best["candidate_id"],
            "rejected_candidate_id": worst["candidate_id"],
            "chosen_reward": float(best["reward"]),
            "rejected_reward": float(worst["reward"]),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def require_reward_pairs(pairs: pd.DataFrame, scored: pd.DataFrame, where: str) -> None:
    """Raise NoPairsError (naming `where`) with the reward counts when `pairs` is empty."""
    if not pairs.empty:
        return
    rewards = scored["reward"]
    raise NoPairsError(
        f"{where}: no preference pairs from {len(scored)} candidates of {scored['prompt_id'].nunique()} prompts "
        f"({int(rewards.isna().sum())} without a reward: no digit among a remote judge's first-token alternatives; "
        f"{rewards.nunique()} distinct rewards): a pair needs a prompt whose candidates got different rewards. Raise "
        "influence.n_prompts or synthesis.candidates_per_prompt, or give the loop another judge (self_reward.judge)"
    )
