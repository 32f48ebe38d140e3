"""What the influence engines share: the warm student and its AdamW state, the reference set encoded once and
its mean loss, and the frame of scores they return.

Both engines (montessori.influence, exact; montessori.first_order, first-order) score the same reference loss
with the same code, so that their numbers differ only by the approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from montessori.student import collate, encode_example, example_losses, load_model, load_optimizer

BASELINES = ("before_step", "null_step")
SCORE_COLUMNS = [
    "candidate_id",
    "prompt_id",
    "loss_before",
    "loss_null_step",
    "loss_after",
    "influence_before_step",
    "influence_null_step",
    "influence",
    "baseline",
    "mode",
]
CANDIDATE_COLUMNS = ("candidate_id", "prompt_id", "instruction", "response", "verdict")


@dataclass
class SavedLosses:
    """Reference losses after each candidate's step, as a shard computes them: the ones an interrupted run saved
    (`done`, by candidate id) are not computed again, and every `every` new ones go to `save` (a progress file's
    append; montessori.progress), so that a killed shard loses at most `every` candidates' work."""

    done: dict[str, float] = field(default_factory=dict)
    save: Callable[[dict[str, float]], None] | None = None
    every: int = 1
    _pending: dict[str, float] = field(default_factory=dict)

    def add(self, candidate_id: str, loss_after: float) -> None:
        self.done[candidate_id] = loss_after
        self._pending[candidate_id] = loss_after
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self._pending and self.save is not None:
            self.save(dict(self._pending))
        self._pending.clear()


def load_warm_student(model_dir: str | Path, optimizer_path: str | Path):
    """The warm student, its tokenizer and its AdamW optimizer, which must hold state for every parameter."""
    model, tokenizer = load_model(model_dir)
    optimizer = load_optimizer(model, optimizer_path)
    for name, param in model.named_parameters():
        if not optimizer.state.get(param):
            raise ValueError(
                f"{optimizer_path}: no AdamW state for parameter {name!r}; influence needs the state of a "
                "student that has taken at least one warm-up step"
            )
    return model, tokenizer, optimizer


@dataclass
class ReferenceSet:
    """The reference examples, tokenized, sorted by length and padded batch by batch to their longest member.

    In a job of G ranks (montessori.sharding) rank r holds references r, r + G, ... of the sorted set, and
    `weights` 0 marks the batches a rank with fewer references runs for nothing, so that every rank runs as many
    forwards (each an FSDP all-gather) as rank 0; the ranks' float64 loss sums are added up."""

    batches: list[dict[str, torch.Tensor]]
    size: int
    weights: list[float] | None = None

    @classmethod
    def encode(
        cls, tokenizer, references: pd.DataFrame, max_length: int, batch_size: int, rank: int = 0, world: int = 1
    ) -> ReferenceSet:
        if references.empty:
            raise ValueError(
                "the reference set is empty: local influence is the change of the mean reference loss, "
                "so it needs at least one {instruction, response} reference (check data.reference_file)"
            )
        encoded = []
        for row in references.itertuples(index=False):
            try:
                encoded.append(encode_example(tokenizer, row.instruction, row.response, max_length))
            except ValueError as e:
                raise ValueError(f"reference {row.reference_id}: {e}") from e
        encoded.sort(key=lambda e: len(e["input_ids"]))
        mine = encoded[rank::world]
        batches = [collate(mine[i : i + batch_size], tokenizer.pad_token_id) for i in range(0, len(mine), batch_size)]
        if world == 1:
            return cls(batches, len(encoded))
        rounds = -(-len(encoded[0::world]) // batch_size)  # rank 0's batches, the most any rank has
        filler = collate(encoded[:1], tokenizer.pad_token_id)
        weights = [1.0] * len(batches) + [0.0] * (rounds - len(batches))
        return cls(batches + [filler] * (rounds - len(batches)), len(encoded), weights)

    def loss(self, model) -> float:
        """Mean over references of each reference's mean token loss, under the model's current weights.

        no_grad, not inference_mode: FSDP's gathered parameters must not become inference tensors."""
        total = torch.zeros((), dtype=torch.float64, device=model.device)
        with torch.no_grad():
            for index, batch in enumerate(self.batches):
                losses = example_losses(model, batch).sum()
                total += losses if self.weights is None else losses * self.weights[index]
        if self.weights is not None:
            torch.distributed.all_reduce(total)
        return float(total / self.size)


def scorable(candidates: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The candidates whose verdict is "ok", renumbered from 0; refuses an unknown baseline or missing columns."""
    if baseline not in BASELINES:
        raise ValueError(f"influence.baseline: {baseline!r} is not one of {', '.join(BASELINES)}")
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidates lack column(s) {missing} (has {list(candidates.columns)})")
    return candidates[candidates["verdict"] == "ok"].reset_index(drop=True)


def encode_candidates(tokenizer, candidates: pd.DataFrame, max_length: int) -> list[dict[str, list[int]]]:
    """Each candidate as the student trains on it; an unscorable one is named."""
    encoded = []
    for row in candidates.itertuples(index=False):
        try:
            encoded.append(encode_example(tokenizer, row.instruction, row.response, max_length))
        except ValueError as e:
            raise ValueError(f"candidate {row.candidate_id}: {e}") from e
    return encoded


def score_frame(
    ok: pd.DataFrame, loss_before: float, loss_null_step: float, losses_after: list[float], baseline: str, mode: str
) -> pd.DataFrame:
    """SCORE_COLUMNS for the scorable candidates `ok`, followed by their other columns, passed through untouched.

    Influence is positive when the candidate's step lowered the reference loss.
    """
    after = pd.Series(losses_after, index=ok.index, dtype="float64")
    scores = pd.DataFrame(
        {
            "candidate_id": ok["candidate_id"],
            "prompt_id": ok["prompt_id"],
            "loss_before": pd.Series(loss_before, index=ok.index, dtype="float64"),
            "loss_null_step": pd.Series(loss_null_step, index=ok.index, dtype="float64"),
            "loss_after": after,
            "influence_before_step": loss_before - after,
            "influence_null_step": loss_null_step - after,
        }
    )
    scores["influence"] = scores[f"influence_{baseline}"]
    scores["baseline"] = pd.Series(baseline, index=ok.index, dtype="object")
    scores["mode"] = pd.Series(mode, index=ok.index, dtype="object")
    passed = ok.drop(columns=["candidate_id", "prompt_id"])
    return pd.concat([scores, passed], axis=1)
