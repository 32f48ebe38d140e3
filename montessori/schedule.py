"""Warmup-stable-decay schedules sized from the optimizer steps a Trainer really takes (DPO and SFT share it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WsdSteps:
    """Optimizer steps in each phase of a warmup-stable-decay schedule."""

    warmup: int
    stable: int
    decay: int

    @property
    def total(self) -> int:
        return self.warmup + self.stable + self.decay


def optimizer_steps(n_examples: int, batch_size: int, gradient_accumulation: int, epochs: float) -> int:
    """Optimizer steps the transformers Trainer takes in one process (a short last batch or accumulation counts)."""
    batches = math.ceil(n_examples / batch_size)
    per_epoch = max(math.ceil(batches / gradient_accumulation), 1)
    return math.ceil(epochs * per_epoch)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def wsd_steps(total_steps: int, warmup: float, stable: float, decay: float, key: str = "schedule") -> WsdSteps:
    """Split `total_steps` by the ratios; phase boundaries are rounded, so ratios summing to 1 cover every step.

    Ratios summing to less than 1 leave the last steps at the minimum learning rate (transformers' behaviour).
    """
    ratio_sum = warmup + stable + decay
    if ratio_sum > 1 + 1e-9:
        raise ValueError(
            f"config key {key!r}: warmup {warmup} + stable {stable} + decay {decay} = {ratio_sum:g} exceeds 1; "
            "the ratios are fractions of the training steps"
        )
    warmup_end = _round_half_up(total_steps * warmup)
    stable_end = _round_half_up(total_steps * (warmup + stable))
    decay_end = min(_round_half_up(total_steps * ratio_sum), total_steps)
    return WsdSteps(warmup=warmup_end, stable=stable_end - warmup_end, decay=decay_end - stable_end)
