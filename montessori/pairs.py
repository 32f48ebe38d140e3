"""Preference pairs for the teacher's DPO: within each prompt, every helpful candidate against every harmful one.

A candidate with influence > 0 helped the student (chosen), one with influence < 0 hurt it (rejected). Influence
exactly 0 carries no preference, and a NaN influence (a candidate whose influence could not be measured) is treated
the same way: it is neither chosen nor rejected.
"""

from __future__ import annotations

import logging

import pandas as pd

from montessori.pool import stable_id

log = logging.getLogger(__name__)

SCORED_COLUMNS = ("candidate_id", "prompt_id", "prompt", "raw_output", "influence", "iteration")
PAIR_COLUMNS = (
    "pair_id",
    "prompt_id",
    "iteration",
    "prompt",
    "chosen",
    "rejected",
    "chosen_candidate_id",
    "rejected_candidate_id",
    "chosen_influence",
    "rejected_influence",
)


class NoPairsError(ValueError):
    """No prompt produced both a positive- and a negative-influence candidate."""


def pair_id(chosen_candidate_id: str, rejected_candidate_id: str) -> str:
    """Depends only on the two candidates (and which one is chosen), so it survives re-runs and reordering."""
    return stable_id("p", f"{chosen_candidate_id}\t{rejected_candidate_id}")


def _check_scored(scored: pd.DataFrame) -> None:
    missing = [c for c in SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise ValueError(
            f"scored candidates lack column(s) {', '.join(missing)} (has: {', '.join(map(str, scored.columns))}); "
            "join candidates.parquet with influence.parquet on candidate_id"
        )
    duplicated = scored["candidate_id"][scored["candidate_id"].duplicated()]
    if not duplicated.empty:
        raise ValueError(
            f"candidate_id {duplicated.iloc[0]!r} occurs more than once in the scored candidates "
            f"({duplicated.nunique()} duplicated ids); the influence join must be one row per candidate"
        )
    per_prompt = scored.groupby("prompt_id")[["prompt", "iteration"]].nunique()
    inconsistent = per_prompt[(per_prompt["prompt"] > 1) | (per_prompt["iteration"] > 1)]
    if not inconsistent.empty:
        raise ValueError(
            f"prompt_id {inconsistent.index[0]!r} has candidates with different prompt texts or iterations; "
            "a prompt_id must name one teacher prompt of one iteration"
        )


def pairable(candidates: pd.DataFrame) -> pd.DataFrame:
    """The usable candidates (verdict "ok", montessori.synthesize.OK) of prompts with at least two of them: the
    only ones a preference pair can use, so the only ones whose influence is worth measuring."""
    usable = candidates[candidates["verdict"] == "ok"]
    return usable[usable.groupby("prompt_id")["candidate_id"].transform("size") >= 2]


def make_pairs(scored: pd.DataFrame) -> pd.DataFrame:
    """All chosen x rejected combinations per prompt_id, sorted by (iteration, prompt_id, chosen, rejected id)."""
    _check_scored(scored)
    n_nan = int(scored["influence"].isna().sum())
    if n_nan:
        log.warning(
            "%d of %d candidates have a NaN influence; they are neither chosen nor rejected", n_nan, len(scored)
        )
    columns = ["candidate_id", "prompt_id", "iteration", "prompt", "raw_output", "influence"]
    chosen = scored.loc[scored["influence"] > 0, columns]
    rejected = scored.loc[scored["influence"] < 0, ["candidate_id", "prompt_id", "raw_output", "influence"]]
    pairs = chosen.merge(rejected, on="prompt_id", suffixes=("_chosen", "_rejected"))
    pairs = pd.DataFrame(
        {
            "pair_id": [
                pair_id(c, r) for c, r in zip(pairs["candidate_id_chosen"], pairs["candidate_id_rejected"], strict=True)
            ],
            "prompt_id": pairs["prompt_id"],
            "iteration": pairs["iteration"],
            "prompt": pairs["prompt"],
            "chosen": pairs["raw_output_chosen"],
            "rejected": pairs["raw_output_rejected"],
            "chosen_candidate_id": pairs["candidate_id_chosen"],
            "rejected_candidate_id": pairs["candidate_id_rejected"],
            "chosen_influence": pairs["influence_chosen"].astype(float),
            "rejected_influence": pairs["influence_rejected"].astype(float),
        },
        columns=list(PAIR_COLUMNS),
    )
    order = ["iteration", "prompt_id", "chosen_candidate_id", "rejected_candidate_id"]
    return pairs.sort_values(order, kind="stable").reset_index(drop=True)


def require_pairs(pairs: pd.DataFrame, scored: pd.DataFrame, where: str) -> None:
    """Raise NoPairsError (naming `where`) with the influence sign counts when `pairs` is empty."""
    if not pairs.empty:
        return
    influence = scored["influence"]
    positive, negative = int((influence > 0).sum()), int((influence < 0).sum())
    zero, nan = int((influence == 0).sum()), int(influence.isna().sum())
    n_prompts = scored["prompt_id"].nunique()
    advice = (
        "a pair needs a prompt with at least one positive and one negative candidate. Raise influence.n_prompts "
        "(more prompts) or synthesis.candidates_per_prompt (more candidates per prompt, at least 2)"
    )
    if positive == 0 or negative == 0:
        advice += (
            "; every measured influence has the same sign, which usually means the warm student's Adam momentum "
            "moves the reference loss alike for every candidate: set influence.baseline: null_step to subtract "
            "that drift"
        )
    raise NoPairsError(
        f"{where}: no preference pairs from {len(scored)} candidates of {n_prompts} prompts "
        f"(influence: {positive} positive, {negative} negative, {zero} zero, {nan} NaN; zero and NaN count as "
        f"neither side); {advice}"
    )
