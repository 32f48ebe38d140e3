"""Splitting the candidates of an iteration into influence shards and gathering the shards' scores.

Apart from the influence engine so that the gather job imports pandas only, not torch and transformers
(seconds of start-up on the teacher loop's critical path).
"""

from __future__ import annotations

import pandas as pd


def shard_of(candidates: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """Shard `shard` (0-based) of `n_shards`: every n_shards-th candidate in candidate_id order.

    Shards are disjoint, cover every candidate, and do not depend on the input's row order.
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: need n_shards >= 1 and 0 <= shard < n_shards")
    ordered = candidates.sort_values("candidate_id", kind="stable").reset_index(drop=True)
    return ordered.iloc[shard::n_shards].reset_index(drop=True)


def gather(shard_frames: list[pd.DataFrame]) -> pd.DataFrame:
    """All shards' scores in candidate_id order; a candidate scored twice is an error."""
    if not shard_frames:
        raise ValueError("gather: no shard frames to gather")
    scores = pd.concat(shard_frames, ignore_index=True)
    repeated = scores["candidate_id"][scores["candidate_id"].duplicated()].unique()
    if len(repeated):
        raise ValueError(
            f"gather: {len(repeated)} candidate_id(s) appear in more than one shard row, e.g. {list(repeated[:5])}; "
            "the shards overlap"
        )
    return scores.sort_values("candidate_id", kind="stable").reset_index(drop=True)
