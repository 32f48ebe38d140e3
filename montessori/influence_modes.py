"""One influence shard: the engine that `influence.mode` names, and the exact engine's check of first_order.

`influence.validate: N` scores N random candidates of a first_order shard (seeded by the config's seed and the
shard) with the exact engine as well. Each row gets the exact influence in `influence_exact` (NaN where not
validated), and every row of the shard its agreement over the validated ones: Spearman rank correlation,
the share whose influence has the exact sign, and the largest relative error |first_order - exact| / |exact|.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch.distributed as dist
from scipy.stats import spearmanr

from montessori.first_order import FirstOrderEngine
from montessori.influence import InfluenceEngine, ShardedInfluenceEngine
from montessori.influence_base import SCORE_COLUMNS, SavedLosses
from montessori.io import write_parquet
from montessori.parallel_training import world_size
from montessori.progress import ProgressFile

MODES = ("exact", "first_order")
AGREEMENT_COLUMNS = ["validation_spearman", "validation_sign_agreement", "validation_max_relative_error"]
VALIDATION_COLUMNS = ["influence_exact", *AGREEMENT_COLUMNS]
MIN_SPEARMAN = 0.95

log = logging.getLogger(__name__)


def new_engine(
    mode: str, model_dir: str | Path, optimizer_path: str | Path, references: pd.DataFrame, cfg: dict
) -> InfluenceEngine | FirstOrderEngine:
    """The engine of `mode` over the warm student, with the influence section `cfg` of the config."""
    shared = {"max_length": cfg["max_length"], "reference_batch_size": cfg["reference_batch_size"]}
    check_processes(mode, world_size())
    if mode == "exact" and world_size() > 1:
        return ShardedInfluenceEngine(model_dir, optimizer_path, references, **shared)
    if mode == "exact":
        return InfluenceEngine(model_dir, optimizer_path, references, **shared)
    if mode == "first_order":
        return FirstOrderEngine(
            model_dir, optimizer_path, references, **shared, candidate_batch_size=cfg["candidate_batch_size"]
        )
    raise ValueError(f"influence.mode: {mode!r} is not one of {', '.join(MODES)}")


def check_processes(mode: str, processes: int) -> None:
    """Only the exact engine runs in several processes; fail before any work otherwise, naming the fix."""
    if processes > 1 and mode != "exact":
        raise ValueError(
            f"influence.mode {mode!r} runs in one process, but rule influence_shard was given {processes} (its "
            "`cpu_processes` resource on CPU, `gpu` on GPUs): set it to 1 (--set-resources "
            "influence_shard:cpu_processes=1, or gpus.influence_shard: 1) or use influence.mode: exact"
        )


def run_shard(
    candidates: str,
    model_dir: str,
    optimizer_path: str,
    references: str,
    cfg: dict,
    seed: int,
    shard: int,
    out: str,
    progress: dict | None = None,
) -> dict:
    """The influence_shard stage (montessori.worker): score the shard's candidates (a parquet file) and write
    them to `out` with their shard number. Under torchrun the exact engine runs sharded over the job's ranks
    (ShardedInfluenceEngine) and rank 0 writes.

    `progress` ({path, digest}: montessori.progress) is where the shard saves its losses every
    `cfg["save_every"]` candidates; a rerun after a kill computes only the candidates missing there. Rank 0
    alone reads and writes that file and tells the other ranks what is done."""
    check_processes(cfg["mode"], world_size())
    candidates, references = pd.read_parquet(candidates), pd.read_parquet(references)

    def score(first_rank: bool) -> tuple[pd.DataFrame, int]:
        saved = SavedLosses(every=cfg["save_every"])
        if progress is not None and first_rank:
            file = ProgressFile(progress["path"], progress["digest"])
            saved.done = {cid: loss for step in file.steps for cid, loss in step.items()}
            saved.save = file.append
        if world_size() > 1:
            shared = [saved.done]
            dist.broadcast_object_list(shared, src=0)
            saved.done = shared[0]
        resumed = len(saved.done)
        scores = score_shard(candidates, model_dir, optimizer_path, references, cfg, seed, shard, saved)
        scores["shard"] = shard
        return scores, resumed

    def finish(scores: pd.DataFrame) -> None:
        write_parquet(scores, out)
        if progress is not None:
            Path(progress["path"]).unlink(missing_ok=True)

    if world_size() == 1:
        scores, resumed = score(first_rank=True)
        finish(scores)
        return {"candidates": len(scores), "resumed": resumed, "processes": 1}
    from montessori import sharding

    with sharding.process_group():
        scores, resumed = score(first_rank=sharding.rank() == 0)
        if sharding.rank() == 0:
            finish(scores)
        dist.barrier()
    return {"candidates": len(scores), "resumed": resumed, "processes": world_size()}


def _score(
    mode: str, candidates: pd.DataFrame, model_dir, optimizer_path, references, cfg, saved: SavedLosses | None = None
) -> pd.DataFrame:
    # The engine lives only as long as this call, so that the exact check never holds two models at once.
    return new_engine(mode, model_dir, optimizer_path, references, cfg).score(candidates, cfg["baseline"], saved)


def validation_sample(candidate_ids: pd.Series, n: int, seed: int, shard: int) -> list[str]:
    """`n` of the ids (all if there are fewer), drawn at random by seed and shard, in their given order."""
    rng = np.random.default_rng([seed, shard])
    picked = np.sort(rng.choice(len(candidate_ids), size=min(n, len(candidate_ids)), replace=False))
    return candidate_ids.iloc[picked].tolist()


def agreement(approximate: pd.Series, exact: pd.Series) -> dict[str, float]:
    """Spearman, sign agreement and max relative error of `approximate` against `exact` (aligned, non-empty)."""
    approximate, exact = approximate.to_numpy(dtype=float), exact.to_numpy(dtype=float)
    # One value has no rank correlation, and neither has a constant series.
    ranked = len(exact) >= 2 and np.ptp(exact) > 0 and np.ptp(approximate) > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # an exact influence of 0 has no relative error
        relative = np.abs(approximate - exact) / np.abs(exact)
    return {
        "validation_spearman": float(spearmanr(approximate, exact).statistic) if ranked else math.nan,
        "validation_sign_agreement": float(np.mean(np.sign(approximate) == np.sign(exact))),
        "validation_max_relative_error": float(np.max(relative)),
    }


def score_shard(
    candidates: pd.DataFrame,
    model_dir: str | Path,
    optimizer_path: str | Path,
    references: pd.DataFrame,
    cfg: dict,
    seed: int,
    shard: int,
    saved: SavedLosses | None = None,
) -> pd.DataFrame:
    """Scores of the shard's candidates by `cfg["mode"]`, with VALIDATION_COLUMNS after SCORE_COLUMNS; `saved`:
    the losses of an interrupted run, and where new ones are saved (the exact check's are recomputed)."""
    scores = _score(cfg["mode"], candidates, model_dir, optimizer_path, references, cfg, saved)
    exact = pd.Series(math.nan, index=scores.index, dtype="float64")
    stats = dict.fromkeys(AGREEMENT_COLUMNS, math.nan)
    if cfg["validate"] and cfg["mode"] == "exact":
        log.info("influence.validate checks first_order against the exact engine; mode exact is exact already")
    elif cfg["validate"] and len(scores):
        ids = validation_sample(scores["candidate_id"], cfg["validate"], seed, shard)
        sample = candidates[candidates["candidate_id"].isin(ids)]
        checked = _score("exact", sample, model_dir, optimizer_path, references, cfg)
        rows = scores["candidate_id"].isin(ids)
        exact[rows] = scores.loc[rows, "candidate_id"].map(checked.set_index("candidate_id")["influence"])
        stats = agreement(scores.loc[rows, "influence"], exact[rows])
        log.info(
            "validation of %d first_order candidates against exact: Spearman %.4f, sign agreement %.1f%%, "
            "max relative error %.3g",
            rows.sum(),
            stats["validation_spearman"],
            100 * stats["validation_sign_agreement"],
            stats["validation_max_relative_error"],
        )
        if stats["validation_spearman"] < MIN_SPEARMAN:
            log.warning(
                "first_order ranks candidates unlike the exact engine (Spearman %.4f < %.2f): lower the step "
                "(warmup.lr) or use influence.mode: exact",
                stats["validation_spearman"],
                MIN_SPEARMAN,
            )
    validation = pd.DataFrame({"influence_exact": exact, **stats}, index=scores.index)
    return pd.concat([scores[SCORE_COLUMNS], validation, scores.drop(columns=SCORE_COLUMNS)], axis=1)
