"""Local data influence (Montessori-Instruct): how much one AdamW step on a candidate lowers the reference loss.

Every candidate starts from the same warm student and AdamW state. Both are snapshotted in memory once and
copied back after each candidate, instead of reloaded from disk, and the reference set is tokenized, sorted
by length and padded once, batch by batch, to its own longest member.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

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
]
CANDIDATE_COLUMNS = ("candidate_id", "prompt_id", "instruction", "response", "verdict")


class InfluenceEngine:
    """The warm student, its AdamW state and the encoded reference set, ready to score candidates."""

    def __init__(
        self,
        model_dir: str | Path,
        optimizer_path: str | Path,
        references: pd.DataFrame,
        max_length: int,
        reference_batch_size: int,
    ) -> None:
        if references.empty:
            raise ValueError(
                "the reference set is empty: local influence is the change of the mean reference loss, "
                "so it needs at least one {instruction, response} reference (check data.reference_file)"
            )
        self.model, self.tokenizer = load_model(model_dir)
        self.optimizer = load_optimizer(self.model, optimizer_path)
        self.max_length = max_length
        self.params = list(self.model.parameters())
        for name, param in self.model.named_parameters():
            if not self.optimizer.state.get(param):
                raise ValueError(
                    f"{optimizer_path}: no AdamW state for parameter {name!r}; influence needs the state of a "
                    "student that has taken at least one warm-up step"
                )
        encoded = []
        for row in references.itertuples(index=False):
            try:
                encoded.append(encode_example(self.tokenizer, row.instruction, row.response, max_length))
            except ValueError as e:
                raise ValueError(f"reference {row.reference_id}: {e}") from e
        encoded.sort(key=lambda e: len(e["input_ids"]))
        self.reference_batches = [
            collate(encoded[i : i + reference_batch_size], self.tokenizer.pad_token_id)
            for i in range(0, len(encoded), reference_batch_size)
        ]
        self.n_references = len(encoded)
        self.weights = [p.detach().clone() for p in self.params]
        self.moments = [{k: v.clone() for k, v in self.optimizer.state[p].items()} for p in self.params]
        self.loss_before = self.reference_loss()
        self.loss_null_step = self._null_step_loss()

    def reference_loss(self) -> float:
        """Mean over references of each reference's mean token loss, under the current weights."""
        total = torch.zeros((), dtype=torch.float64, device=self.model.device)
        with torch.inference_mode():
            for batch in self.reference_batches:
                total += example_losses(self.model, batch).sum()
        return float(total / self.n_references)

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

    def step_loss(self, instruction: str, response: str) -> float:
        """Reference loss after one AdamW step on this example alone; the engine is restored afterwards."""
        example = encode_example(self.tokenizer, instruction, response, self.max_length)
        batch = collate([example], self.tokenizer.pad_token_id)
        try:
            self.optimizer.zero_grad(set_to_none=True)
            example_losses(self.model, batch).sum().backward()
            self.optimizer.step()
            return self.reference_loss()
        finally:
            self.restore()

    def score(self, candidates: pd.DataFrame, baseline: str) -> pd.DataFrame:
        """Influence of every candidate whose verdict is "ok"; positive means the step lowered the reference loss.

        The result holds SCORE_COLUMNS followed by the candidates' other columns, passed through untouched.
        """
        if baseline not in BASELINES:
            raise ValueError(f"influence.baseline: {baseline!r} is not one of {', '.join(BASELINES)}")
        missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
        if missing:
            raise ValueError(f"candidates lack column(s) {missing} (has {list(candidates.columns)})")
        ok = candidates[candidates["verdict"] == "ok"].reset_index(drop=True)
        losses_after = []
        for row in tqdm(ok.itertuples(index=False), total=len(ok), desc="influence", unit="candidate"):
            try:
                losses_after.append(self.step_loss(row.instruction, row.response))
            except ValueError as e:
                raise ValueError(f"candidate {row.candidate_id}: {e}") from e
        after = pd.Series(losses_after, dtype="float64")
        scores = pd.DataFrame(
            {
                "candidate_id": ok["candidate_id"],
                "prompt_id": ok["prompt_id"],
                "loss_before": pd.Series(self.loss_before, index=ok.index, dtype="float64"),
                "loss_null_step": pd.Series(self.loss_null_step, index=ok.index, dtype="float64"),
                "loss_after": after,
                "influence_before_step": self.loss_before - after,
                "influence_null_step": self.loss_null_step - after,
            }
        )
        scores["influence"] = scores[f"influence_{baseline}"]
        scores["baseline"] = pd.Series(baseline, index=ok.index, dtype="object")
        passed = ok.drop(columns=["candidate_id", "prompt_id"])
        return pd.concat([scores, passed], axis=1)
