"""The Self-Reward baseline's scores and pairs (montessori.self_reward); its rules run in the end-to-end test of
configs/test.yaml (tests/test_pipeline.py)."""

import math

import pandas as pd
import pytest

from montessori.pairs import NoPairsError
from montessori.prompts import load_text
from montessori.self_reward import (
    PAIR_COLUMNS,
    expected_reward,
    judge_messages,
    require_reward_pairs,
    reward_frame,
    reward_pairs,
)


def test_the_reward_is_the_expected_total_under_the_judges_digit_probabilities():
    assert expected_reward({"0": 0, "1": 0, "2": 0, "3": 0.25, "4": 0.625, "5": 0.125}) == pytest.approx(3.875)
    assert math.isnan(expected_reward({}))


def test_the_shipped_prompt_shows_the_instruction_and_the_answer():
    template = load_text("self_reward", "judge.txt", ("{instruction}", "{response}"), "self_reward.prompt")
    (message,) = judge_messages(template, "Name a planet.", "Mars.")
    assert message["role"] == "user" and "Name a planet." in message["content"] and "Mars." in message["content"]
    assert "a single digit from 0 to 5" in message["content"]


def scored(rewards: dict[str, float]) -> pd.DataFrame:
    ids = list(rewards)
    return pd.DataFrame({
        "candidate_id": ids,
        "prompt_id": [i.split("-")[0] for i in ids],
        "iteration": 1,
        "prompt": [f"prompt of {i.split('-')[0]}" for i in ids],
        "raw_output": [f"raw {i}" for i in ids],
        "reward": list(rewards.values()),
    })  # fmt: skip


def test_each_prompt_pairs_its_highest_reward_against_its_lowest():
    rewards = {"p1-c0": 3, "p1-c1": 5, "p1-c2": 1, "p1-c3": 5, "p2-c0": 2, "p2-c1": 2, "p3-c0": math.nan,
               "p3-c1": 4, "p4-c0": 0, "p4-c1": math.nan, "p4-c2": 1}  # fmt: skip
    pairs = reward_pairs(scored(rewards))
    assert list(pairs.columns) == PAIR_COLUMNS
    # p1: the tie at 5 goes to the lower id; p2 ties (no pair); p3 has one judged candidate; NaN takes no side.
    assert pairs[["prompt_id", "chosen_candidate_id", "rejected_candidate_id", "chosen_reward",
                  "rejected_reward"]].values.tolist() == [["p1", "p1-c1", "p1-c2", 5.0, 1.0],
                                                          ["p4", "p4-c2", "p4-c0", 1.0, 0.0]]  # fmt: skip
    assert pairs.loc[0, "chosen"] == "raw p1-c1" and pairs.loc[0, "prompt"] == "prompt of p1"


def test_no_pairs_names_the_file_and_the_rewards():
    frame = scored({"p1-c0": 3, "p1-c1": 3, "p2-c0": math.nan, "p2-c1": math.nan})
    with pytest.raises(NoPairsError, match=r"iter1/pairs.parquet: no preference pairs from 4 candidates of 2 "):
        require_reward_pairs(reward_pairs(frame), frame, where="iter1/pairs.parquet")


def test_every_judgment_is_stored_beside_its_reward():
    candidates = scored({"p1-c0": 0, "p1-c1": 0}).drop(columns="reward")
    probabilities = [{"2": 1.0, "3": 0.0}, {}]
    rewards = reward_frame(candidates, probabilities, ["2", "Sure"], "local-hf:teacher#abc")
    assert rewards["reward"].tolist()[0] == 2.0 and math.isnan(rewards["reward"].tolist()[1])
    assert rewards["judgment"].tolist() == ["2", "Sure"]
    assert rewards["score_probabilities"].tolist() == ['{"2": 1.0, "3": 0.0}', "{}"]
    assert set(rewards["judge"]) == {"local-hf:teacher#abc"}
