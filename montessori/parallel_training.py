"""DPO and SFT in G processes (torchrun, montessori.launch): the batch split, FSDP or DDP, and the rank-0 save.

The TRL trainers read torchrun's RANK / WORLD_SIZE themselves; accelerate then wraps the model in DDP (gloo on
CPU, where the launcher sets ACCELERATE_USE_CPU) or, on GPUs given an FSDP config, in FSDP2 (`fully_shard`).
What this module adds is what must be the same at any G:
- the effective batch: per-device micro-batch x accumulation x G equals the configured batch, or the job fails
  naming the keys; the transformers Trainer normalises the token loss by the tokens of the whole global batch
  (average_tokens_across_devices), so G ranks compute the gradient one process computes with accumulation;
- the saved model: the FULL state dict gathered from every rank, written by rank 0 alone, atomically, so that
  it loads exactly like a one-process model.

The FSDP settings are a JSON file (configs/fsdp/*.json) handed to TrainingArguments' `fsdp_config`, not an
`accelerate launch` YAML: our ranks are started by torchrun, so an accelerate config file would never be read,
while the Trainer builds accelerate's FSDP plugin from `fsdp_config` in every rank. accelerate runs FSDP on GPUs
only (on CPU it keeps DDP), so FSDP is switched on where CUDA exists and G > 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from montessori.io import atomic_path

CHECKPOINTING = ("auto", True, False)
# The schema's default of dpo.fsdp_config and sft.fsdp_config, for callers that pass none.
DEFAULT_FSDP_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fsdp" / "full_shard.json"


def world_size() -> int:
    """The number of ranks of this job (torchrun's WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def uses_gradient_checkpointing(setting: str | bool, processes: int) -> bool:
    """`auto` recomputes activations in multi-process jobs (the big models that need several GPUs), not in
    one-process ones (~20% faster where the activations fit)."""
    if setting not in CHECKPOINTING:
        raise ValueError(f"gradient_checkpointing {setting!r} is not one of: auto, true, false")
    return processes > 1 if setting == "auto" else bool(setting)


def read_fsdp_config(path: str | Path, key: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config key {key!r}: FSDP config {path} not found (see configs/fsdp/)")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); config key {key!r} names it") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a JSON object of TrainingArguments fsdp_config settings")
    return loaded


@dataclass(frozen=True)
class Parallelism:
    """How a DPO or SFT job of `processes` ranks trains: FSDP (GPUs, G > 1) or DDP / one process, and whether
    activations are recomputed."""

    processes: int
    fsdp_settings: dict[str, Any] | None
    gradient_checkpointing: bool

    def training_arguments(self) -> dict[str, Any]:
        """The DPOConfig / SFTConfig settings. Under FSDP, checkpointing is FSDP's own activation checkpointing
        (transformers' gradient_checkpointing would all-gather every layer once more in the backward pass)."""
        if self.fsdp_settings is None:
            # Every trainable parameter gets a gradient in each step, so DDP need not search the graph for unused
            # ones (transformers' default otherwise; ignored in one process).
            return {"gradient_checkpointing": self.gradient_checkpointing, "ddp_find_unused_parameters": False}
        settings = {**self.fsdp_settings, "activation_checkpointing": self.gradient_checkpointing}
        return {"fsdp": True, "fsdp_config": settings, "gradient_checkpointing": False}

    def summary(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "fsdp": self.fsdp_settings is not None,
            "gradient_checkpointing": self.gradient_checkpointing,
        }


def parallelism(
    gradient_checkpointing: str | bool,
    fsdp_config: str | Path,
    fsdp_key: str,
    processes: int | None = None,
    cuda_available: bool | None = None,
) -> Parallelism:
    """The Parallelism of this job (`processes`: torchrun's WORLD_SIZE unless given): FSDP from the JSON file
    `fsdp_config` (config key `fsdp_key`) where CUDA exists and G > 1, else DDP (or one process)."""
    processes = world_size() if processes is None else processes
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    fsdp = read_fsdp_config(fsdp_config, fsdp_key) if processes > 1 and cuda_available else None
    return Parallelism(processes, fsdp, uses_gradient_checkpointing(gradient_checkpointing, processes))


def save_full_model(trainer, out_dir: str | Path, write: Callable[[Path, dict[str, torch.Tensor]], None]) -> None:
    """Gather the trained model's full state dict from every rank and let rank 0 `write(folder, state_dict)`
    into a temporary folder that becomes `out_dir` only when it is complete. Every rank must call this (the
    gather is collective); the others wait until rank 0 has written."""
    accelerator = trainer.accelerator
    state = accelerator.get_state_dict(trainer.model)
    if accelerator.is_main_process:
        with atomic_path(out_dir, is_dir=True) as tmp:
            write(tmp, state)
    accelerator.wait_for_everyone()
