"""Warmup-stable-decay schedules sized from the optimizer steps a Trainer really takes (DPO and SFT share it), and
the split of an effective batch over a job's processes. Plain arithmetic: the workflow checks the config with it
before any job runs."""

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


def accumulation_steps(batch: int, micro_batch: int, processes: int, batch_name: str, micro_key: str, fix: str) -> int:
    """Micro-batches per optimizer step on each rank such that micro_batch x accumulation x processes = batch.

    `batch_name` says where the effective batch comes from (a config key, or a product of them) and `fix` what to
    change, for the error.
    """
    per_step = micro_batch * processes
    if batch % per_step:
        raise ValueError(
            f"the effective batch ({batch_name} = {batch}) does not split over {processes} process(es) of "
            f"{micro_key} = {micro_batch} each: it must be a multiple of {per_step}; {fix}, or run the job in "
            "fewer processes (resource gpu, from config key gpus, on GPU nodes; cpu_processes on CPU)"
        )
    return batch // per_step


def dpo_accumulation(batch_size: int, gradient_accumulation: int, processes: int) -> int:
    """Each rank's accumulation steps for DPO's effective batch of batch_size x gradient_accumulation pairs."""
    return accumulation_steps(
        batch_size * gradient_accumulation,
        batch_size,
        processes,
        "dpo.batch_size x dpo.gradient_accumulation",
        "dpo.batch_size",
        "make dpo.gradient_accumulation a multiple of the process count (lowering dpo.batch_size keeps the batch)",
    )


def sft_accumulation(batch_size: int, micro_batch_size: int, processes: int) -> int:
    """Each rank's accumulation steps for SFT's effective batch sft.batch_size."""
    return accumulation_steps(
        batch_size, micro_batch_size, processes, "sft.batch_size", "sft.micro_batch_size",
        "change sft.batch_size or sft.micro_batch_size",
    )  # fmt: skip


def optimizer_steps(
    n_examples: int, batch_size: int, gradient_accumulation: int, epochs: float, processes: int = 1
) -> int:
    """Optimizer steps the transformers Trainer takes with `processes` ranks of `batch_size` examples per
    micro-batch (a short last batch or accumulation counts).

    Under accelerate each rank takes every processes-th micro-batch, and with its even_batches (the default) the
    ranks that would be one short repeat the first examples, so each rank has ceil(batches / processes).
    """
    batches = math.ceil(math.ceil(n_examples / batch_size) / processes)
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
