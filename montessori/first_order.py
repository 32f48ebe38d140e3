"""First-order local influence (`influence.mode: first_order`): the exact AdamW update, dotted with ∇L_ref.

The exact engine takes candidate x's AdamW step and evaluates every reference after it. The step is tiny, so
to first order L_ref(θ + Δθ(x)) ≈ L_ref(θ) + ∇L_ref(θ)·Δθ(x), with Δθ(x) the exact update that torch's AdamW
would make from the warm state on x's gradient: both moments, bias correction from the saved step count, eps,
decoupled weight decay and lr. ∇L_ref is computed once per engine; each candidate then costs one forward and
backward pass on itself and a few fused operations over flat parameter buffers, instead of a step and a pass
over the whole reference set. The error is second order in the step: it shrinks with lr² while the influence
shrinks with lr (README, "Influence modes", has the agreement measured at the paper's lr 5e-6).

Per-example gradients of K candidates come from one vmap(grad(...)) pass of torch.func over the Hugging Face
model. Memory: the model (its weights are views into one flat buffer), the AdamW moments (two flat buffers),
∇L_ref, one scratch buffer, and the K-batch of per-example gradients (one preallocated row for K = 1; K rows,
held twice while vmap assembles them, for K > 1).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import torch
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from montessori.influence_base import (
    ReferenceSet,
    SavedLosses,
    encode_candidates,
    load_warm_student,
    scorable,
    score_frame,
)
from montessori.student import IGNORE_INDEX, collate, example_losses, label_span, span_loss_sums

log = logging.getLogger(__name__)


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One flat float buffer holding the tensors one after the other (a copy)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


@dataclass
class FlatAdamW:
    """One more step of torch's AdamW (amsgrad off) from a saved state, over flat buffers.

    With s steps saved, t = s + 1, the warm moments m, v and a gradient g:
        m' = β1·m + (1 − β1)·g,   v' = β2·v + (1 − β2)·g²,
        Δθ = θ' − θ = −lr·wd·θ − lr / (1 − β1^t) · m' / (√v' / √(1 − β2^t) + eps).
    Only g differs between candidates, so the state is kept pre-scaled, and a gradient becomes its update in
    five passes over memory:
        Δθ = −lr·wd·θ − (M + a·g) / (√(V + b·g²) + eps),
        M = lr·β1 / (1 − β1^t) · m,  a = lr·(1 − β1) / (1 − β1^t),  V = β2 / (1 − β2^t) · v,  b = (1 − β2) / (1 − β2^t).
    """

    weights: torch.Tensor
    momentum: torch.Tensor  # M
    variance: torch.Tensor  # V
    momentum_scale: float  # a
    variance_scale: float  # b
    eps: float
    decay: float  # lr·wd

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.AdamW, weights: torch.Tensor) -> FlatAdamW:
        """The optimizer's state in the parameter order of its (single) group; `weights` is that order flattened."""
        (group,) = optimizer.param_groups
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("first-order influence implements AdamW with amsgrad and maximize off")
        states = [optimizer.state[p] for p in group["params"]]
        steps = {int(state["step"]) for state in states}
        if len(steps) != 1:
            raise ValueError(
                f"the AdamW state has parameters at different step counts {sorted(steps)}; first-order influence "
                "needs one bias correction for all of them (use influence.mode: exact)"
            )
        t = steps.pop() + 1
        lr, (beta1, beta2) = group["lr"], group["betas"]
        bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2**t
        return cls(
            weights=weights,
            momentum=flatten([s["exp_avg"] for s in states]).mul_(lr * beta1 / bias_correction1),
            variance=flatten([s["exp_avg_sq"] for s in states]).mul_(beta2 / bias_correction2),
            momentum_scale=lr * (1 - beta1) / bias_correction1,
            variance_scale=(1 - beta2) / bias_correction2,
            eps=group["eps"],
            decay=lr * group["weight_decay"],
        )

    def direction_(self, gradient: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        """Overwrite the flat `gradient` with (M + a·g) / (√(V + b·g²) + eps), so Δθ = −that − lr·wd·θ.

        `work` is scratch of the same size.
        """
        torch.addcmul(self.variance, gradient, gradient, value=self.variance_scale, out=work)
        work.sqrt_().add_(self.eps)
        torch.add(self.momentum, gradient, alpha=self.momentum_scale, out=gradient)
        return gradient.div_(work)

    def update(self, gradient: torch.Tensor) -> torch.Tensor:
        """Δθ = θ' − θ of one step on the flat `gradient`, as a new tensor."""
        direction = self.direction_(gradient.clone(), torch.empty_like(gradient))
        return direction.neg_().sub_(self.weights, alpha=self.decay)


@contextlib.contextmanager
def full_embedding_gradients(model: torch.nn.Module):
    """Embeddings that differentiate their padding row too, as the loss does.

    nn.Embedding(padding_idx=...) zeroes the gradient of the padding token's row, so a training step never moves
    that row through the input lookup. SmolLM2 pads with <|im_end|>, which ends every turn, and its row still
    moves through the tied output head and the momentum; the Taylor term needs the loss's true derivative along
    that move (without it, first order was off by ~1% on the tiny model even at lr 1e-5). The forward pass is
    the same either way.
    """
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None]
    saved = [m.padding_idx for m in embeddings]
    for module in embeddings:
        module.padding_idx = None
    try:
        yield
    finally:
        for module, padding_idx in zip(embeddings, saved):
            module.padding_idx = padding_idx


def fit_candidate_batch(requested: int, n_params: int, free_bytes: int) -> int:
    """K, lowered so that K float32 per-example gradients, held twice, take at most half the free memory."""
    return max(1, min(requested, free_bytes // 2 // (2 * 4 * n_params)))


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


class FirstOrderEngine:
    """The warm student over flat buffers, its AdamW state and ∇L_ref, ready to score candidates."""

    mode = "first_order"

    def __init__(
        self,
        model_dir: str | Path,
        optimizer_path: str | Path,
        references: pd.DataFrame,
        max_length: int,
        reference_batch_size: int,
        candidate_batch_size: int = 1,
    ) -> None:
        if candidate_batch_size < 1:
            raise ValueError(f"influence.candidate_batch_size: {candidate_batch_size} must be at least 1")
        self.model, self.tokenizer, optimizer = load_warm_student(model_dir, optimizer_path)
        self.references = ReferenceSet.encode(self.tokenizer, references, max_length, reference_batch_size)
        self.max_length = max_length
        self.names = [name for name, _ in self.model.named_parameters()]
        self.params = list(self.model.parameters())
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        with torch.no_grad():
            weights = flatten(self.params)
            # The model computes with views into the flat buffer, so the weights are held once.
            for param, view in zip(self.params, self.unflatten(weights)):
                param.data = view
        self.adamw = FlatAdamW.from_optimizer(optimizer, weights)
        del optimizer
        self.work = torch.empty_like(weights)
        self.single = torch.empty((1, weights.numel()), dtype=weights.dtype, device=weights.device)
        self.candidate_batch_size = fit_candidate_batch(
            candidate_batch_size, weights.numel(), free_memory(weights.device)
        )
        if self.candidate_batch_size < candidate_batch_size:
            log.warning(
                "influence.candidate_batch_size %d does not fit in memory; using %d",
                candidate_batch_size,
                self.candidate_batch_size,
            )
        self.reference_gradient, self.loss_before = self._reference_gradient()
        # ∇L_ref·Δθ = −∇L_ref·direction − lr·wd·(∇L_ref·θ); the decay term is the same for every candidate.
        self.decay_term = self.adamw.decay * self._dot(self.reference_gradient, weights)
        self.single.zero_()
        self.loss_null_step = self.loss_before + self.loss_changes(self.single)[0]

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat buffer (its last dimension) shaped like the model's parameters."""
        lead = flat.shape[:-1]
        return [part.view(*lead, *shape) for part, shape in zip(torch.split(flat, self.numels, dim=-1), self.shapes)]

    def _backward_into(self, flat: torch.Tensor, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` into the flat buffer: each parameter's .grad is a view into it."""
        for param, view in zip(self.params, self.unflatten(flat)):
            param.grad = view
        try:
            loss.backward()
        finally:
            for param in self.params:
                param.grad = None

    def _reference_gradient(self) -> tuple[torch.Tensor, float]:
        """∇L_ref at the warm weights, and L_ref itself, from one forward and backward pass over the references.

        L_ref is the very reference loss the exact engine evaluates (ReferenceSet.loss), summed the same way.
        """
        gradient = torch.zeros_like(self.adamw.weights)
        total = torch.zeros((), dtype=torch.float64, device=gradient.device)
        with full_embedding_gradients(self.model):
            for batch in self.references.batches:
                losses = example_losses(self.model, batch)
                self._backward_into(gradient, losses.sum() / self.references.size)
                total += losses.detach().sum()
        return gradient, float(total / self.references.size)

    def candidate_gradients(self, examples: list[dict[str, list[int]]]) -> torch.Tensor:
        """Per-example gradients of each example's mean token loss at the warm weights: one flat row each."""
        if len(examples) == 1:
            self.single.zero_()
            batch = collate(examples, self.tokenizer.pad_token_id)
            self._backward_into(self.single[0], example_losses(self.model, batch).sum())
            return self.single
        return self._batched_gradients(examples)

    def _batched_gradients(self, examples: list[dict[str, list[int]]]) -> torch.Tensor:
        batch = collate(examples, self.tokenizer.pad_token_id)
        device = self.adamw.weights.device
        labels = batch["labels"].to(device)
        start, end = label_span(labels)
        keep = torch.arange(start - 1, end - 1, device=device)
        targets = labels[:, start:end]
        counts = (targets != IGNORE_INDEX).sum(dim=1)
        per_example = vmap(grad(self._example_loss), in_dims=(None, 0, 0, 0, None))
        with warnings.catch_warnings():
            # CPU SDPA has no vmap batching rule; torch runs it example by example, which is exact.
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            return per_example(self.adamw.weights, batch["input_ids"].to(device), targets, counts, keep)

    def _example_loss(self, weights, input_ids, targets, count, keep) -> torch.Tensor:
        # One example under vmap: no attention mask, because the batch is right-padded and attention is causal,
        # so no real token attends to padding; the padding positions themselves carry no label.
        params = dict(zip(self.names, self.unflatten(weights)))
        kwargs = {"input_ids": input_ids[None], "logits_to_keep": keep, "use_cache": False}
        logits = functional_call(self.model, params, args=(), kwargs=kwargs).logits
        return span_loss_sums(logits, targets[None])[0] / count

    @torch.no_grad()
    def _dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        # Through the scratch buffer and torch's cascade summation: BLAS's float32 dot is ~100x less accurate.
        return float(torch.mul(a, b, out=self.work).sum())

    @torch.no_grad()
    def loss_changes(self, gradients: torch.Tensor) -> list[float]:
        """First-order change of the reference loss, ∇L_ref·Δθ(x), for each row of `gradients` (overwritten)."""
        changes = []
        for row in gradients:
            direction = self.adamw.direction_(row, self.work)
            changes.append(-float(direction.mul_(self.reference_gradient).sum()) - self.decay_term)
        return changes

    def score(self, candidates: pd.DataFrame, baseline: str, saved: SavedLosses | None = None) -> pd.DataFrame:
        """Influence of every candidate whose verdict is "ok"; positive means the step lowers the reference loss.

        Same columns as the exact engine's; loss_after and loss_null_step are the first-order estimates. `saved`
        holds the losses of an interrupted run (not computed again) and receives the new ones.
        """
        saved = saved or SavedLosses()
        ok = scorable(candidates, baseline)
        ids = ok["candidate_id"].tolist()
        examples = encode_candidates(self.tokenizer, ok, self.max_length)
        # Batches of similar length waste little on padding.
        order = sorted(
            (i for i in range(len(examples)) if ids[i] not in saved.done), key=lambda i: len(examples[i]["input_ids"])
        )
        first = 0
        with tqdm(total=len(order), desc="influence (first_order)", unit="candidate") as bar:
            while first < len(order):
                chunk = order[first : first + self.candidate_batch_size]
                try:
                    batch_changes = self.loss_changes(self.candidate_gradients([examples[i] for i in chunk]))
                except torch.OutOfMemoryError:
                    if len(chunk) == 1:
                        raise
                    self.candidate_batch_size = len(chunk) // 2
                    log.warning("out of memory at %d candidates a batch; retrying at %d", len(chunk), len(chunk) // 2)
                    continue
                for index, change in zip(chunk, batch_changes):
                    saved.add(ids[index], self.loss_before + change)
                first += len(chunk)
                bar.update(len(chunk))
        saved.flush()
        losses_after = [saved.done[cid] for cid in ids]
        return score_frame(ok, self.loss_before, self.loss_null_step, losses_after, baseline, self.mode)
