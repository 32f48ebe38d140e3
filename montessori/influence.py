"""Local data influence (Montessori-Instruct): how much one AdamW step on a candidate lowers the reference loss.

This is the exact engine (`influence.mode: exact`): it takes the step and evaluates the whole reference set
after it. Every candidate starts from the same warm student and AdamW state. Both are snapshotted in memory once
and copied back after each candidate, instead of reloaded from disk, and the reference set is tokenized, sorted
by length and padded once, batch by batch, to its own longest member (montessori.influence_base).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from montessori import chat_format
from montessori.influence_base import (
    ReferenceSet,
    SavedLosses,
    encode_candidates,
    load_warm_student,
    scorable,
    score_frame,
)
from montessori.student import collate, example_losses


class InfluenceEngine:
    """The warm student, its AdamW state and the encoded reference set, ready to score candidates."""

    mode = "exact"

    def __init__(
        self,
        model_dir: str | Path,
        optimizer_path: str | Path,
        references: pd.DataFrame,
        max_length: int,
        reference_batch_size: int,
    ) -> None:
        self.model, self.tokenizer, self.optimizer = self._load(model_dir, optimizer_path)
        self.references = ReferenceSet.encode(
            self.tokenizer, references, max_length, reference_batch_size, *self._reference_split()
        )
        self.max_length = max_length
        self.params = list(self.model.parameters())
        self.weights = [p.detach().clone() for p in self.params]
        self.moments = [{k: v.clone() for k, v in self.optimizer.state[p].items()} for p in self.params]
        self.loss_before = self.reference_loss()
        self.loss_null_step = self._null_step_loss()

    def _load(self, model_dir, optimizer_path):
        return load_warm_student(model_dir, optimizer_path)

    def _reference_split(self) -> tuple[int, int]:
        return 0, 1  # rank, world: one process evaluates every reference

    def reference_loss(self) -> float:
        """Mean over references of each reference's mean token loss, under the current weights."""
        return self.references.loss(self.model)

    def restore(self) -> None:
        """Put back the warm weights and AdamW state captured at construction."""
        with torch.no_grad():
            for param, weight, moments in zip(self.params, self.weights, self.moments):
                param.copy_(weight)
                param.grad = None
                for key, value in self.optimizer.state[param].items():
                    value.copy_(moments[key])

    def _null_step_loss(self) -> float:
        # An all-zero gradient still moves the weights along the warm momentum; this is the drift that every
        # candidate's step shares. AdamW skips parameters whose grad is None, so the zeros are explicit.
        try:
            for param in self.params:
                param.grad = torch.zeros_like(param)
            self.optimizer.step()
            return self.reference_loss()
        finally:
            self.restore()

    def loss_after_step(self, example: dict[str, list[int]]) -> float:
        """Reference loss after one AdamW step on this encoded example alone; the engine is restored afterwards."""
        batch = collate([example], self.tokenizer.pad_token_id)
        try:
            self.optimizer.zero_grad(set_to_none=True)
            example_losses(self.model, batch).sum().backward()
            self.optimizer.step()
            return self.reference_loss()
        finally:
            self.restore()

    def score(self, candidates: pd.DataFrame, baseline: str, saved: SavedLosses | None = None) -> pd.DataFrame:
        """Influence of every candidate whose verdict is "ok"; positive means the step lowered the reference loss.

        The result holds SCORE_COLUMNS followed by the candidates' other columns, passed through untouched.
        `saved` holds the losses of an interrupted run (not computed again) and receives the new ones.
        """
        saved = saved or SavedLosses()
        ok = scorable(candidates, baseline)
        examples = encode_candidates(self.tokenizer, ok, self.max_length)
        todo = [i for i, cid in enumerate(ok["candidate_id"]) if cid not in saved.done]
        for i in tqdm(todo, desc="influence (exact)", unit="candidate"):
            saved.add(ok["candidate_id"].iat[i], self.loss_after_step(examples[i]))
        saved.flush()
        losses_after = [saved.done[cid] for cid in ok["candidate_id"]]
        return score_frame(ok, self.loss_before, self.loss_null_step, losses_after, baseline, self.mode)


class ShardedInfluenceEngine(InfluenceEngine):
    """The exact engine in G ranks of a process group (montessori.sharding): weights and AdamW state are sharded
    with FSDP2, and the snapshot that `restore` copies back is each rank's own shards.

    Every rank steps on the SAME candidate with its full loss: FSDP averages the ranks' gradients, and the average
    of G identical gradients is the candidate's gradient g (a loss split over ranks would need scaling by G, as
    the warm-up does). The reference set is split over the ranks (ReferenceSet), whose float64 loss sums are
    all-reduced; every rank returns the same scores.
    """

    def _load(self, model_dir, optimizer_path):
        from montessori import sharding

        tokenizer, _ = chat_format.load_tokenizer(model_dir, chat_format.AUTO, "student")
        model = sharding.load_sharded_weights(model_dir, sharding.rank_device())
        return model, tokenizer, sharding.load_sharded_optimizer(model, optimizer_path)

    def _reference_split(self) -> tuple[int, int]:
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
