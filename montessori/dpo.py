"""Teacher DPO: train the teacher to prefer the raw outputs (rationale + instruction) that helped the student.

TRL's DPOTrainer does the optimisation; this module turns pairs into its conversational format, sizes the
warmup-stable-decay schedule from the number of optimizer steps actually taken, and saves a plain HF model
directory (LoRA adapters merged) that transformers and vLLM load. A job of G processes (montessori.launch; FSDP on
GPUs, DDP on CPU) keeps the effective batch and saves the same kind of folder (montessori.parallel_training).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from montessori import chat_format
from montessori.io import read_frame
from montessori.parallel_training import DEFAULT_FSDP_CONFIG, is_main_process, parallelism, save_full_model
from montessori.precision import default_device, trains_in_bf16
from montessori.schedule import WsdSteps, dpo_accumulation, optimizer_steps, wsd_steps

log = logging.getLogger(__name__)

SCHEDULE_KEYS = ("warmup", "stable", "decay", "min_lr_ratio")
LORA_KEYS = ("enabled", "r", "alpha", "dropout")
# Logged each step by TRL's DPOTrainer; kept in the summary's history.
HISTORY_KEYS = ("loss", "learning_rate", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def preference_dataset(pairs: pd.DataFrame) -> Dataset:
    """Pairs in TRL's conversational preference format: one user turn, two alternative assistant turns."""
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs lack column(s) {', '.join(missing)} (has: {', '.join(map(str, pairs.columns))})")
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in pairs["prompt"]],
            "chosen": [[{"role": "assistant", "content": c}] for c in pairs["chosen"]],
            "rejected": [[{"role": "assistant", "content": r}] for r in pairs["rejected"]],
        }
    )


def _require_keys(mapping: Mapping[str, Any], keys: tuple[str, ...], key: str) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ValueError(f"config key {key!r} lacks {', '.join(missing)} (has: {', '.join(mapping)})")


def _lora_config(lora: Mapping[str, Any]):
    from peft import LoraConfig

    # "all-linear" leaves out the output layer, which TRL refuses to adapt (it reads lm_head.weight directly).
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _merged_lora_model(teacher_path: str | Path, lora: Mapping[str, Any], state: dict[str, torch.Tensor]):
    """The teacher with the trained adapters merged in, rebuilt from the gathered state dict of the PEFT model:
    under FSDP no rank holds the whole adapted model, so the merge happens on a fresh copy (on rank 0)."""
    from peft import get_peft_model

    base = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    adapted = get_peft_model(base, _lora_config(lora))
    adapted.load_state_dict(state, strict=True)
    return adapted.merge_and_unload()


def _summary(trainer, train_output, n_pairs: int, plan: WsdSteps, lora: bool, seconds: float) -> dict[str, Any]:
    steps = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    history = [{"step": e["step"], **{k: e[k] for k in HISTORY_KEYS if k in e}} for e in steps]

    def mean_of(name: str) -> float | None:
        values = [e[name] for e in steps if name in e]
        return sum(values) / len(values) if values else None

    return {
        "pairs": n_pairs,
        "pairs_trained": len(trainer.train_dataset),
        "steps": train_output.global_step,
        "schedule": {"warmup": plan.warmup, "stable": plan.stable, "decay": plan.decay},
        "final_loss": steps[-1]["loss"] if steps else None,
        "mean_loss": train_output.training_loss,
        "reward_accuracy": mean_of("rewards/accuracies"),
        "reward_margin": mean_of("rewards/margins"),
        "lora": lora,
        "bf16": trainer.args.bf16,
        "seconds": round(seconds, 2),
        "history": history,
    }


def train_teacher(
    teacher_path: str | Path,
    pairs: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    beta: float,
    lr: float,
    batch_size: int,
    gradient_accumulation: int,
    epochs: float,
    max_length: int,
    schedule: Mapping[str, float],
    lora: Mapping[str, Any],
    seed: int,
    precision: str = "auto",
    chat_template: str = chat_format.AUTO,
    gradient_checkpointing: str | bool = "auto",
    fsdp_config: str | Path = DEFAULT_FSDP_CONFIG,
) -> dict[str, Any]:
    """DPO-train the teacher at `teacher_path` on `pairs` (a frame or a parquet file); write the updated teacher to
    `out_dir`; return a summary.

    Each optimizer step sees `batch_size` x `gradient_accumulation` pairs (the effective batch) at any number of
    processes G (torchrun's WORLD_SIZE): `batch_size` pairs per device and forward pass, gradient_accumulation / G
    accumulation steps per rank. `gradient_checkpointing` (auto = in multi-process jobs) and `fsdp_config` (the
    FSDP settings of multi-GPU jobs) are dpo.gradient_checkpointing and dpo.fsdp_config.

    TRL renders the pairs in the teacher's chat format (`chat_template`, models.chat_template.teacher), the one
    the teacher wrote them in; teacher_i keeps it in its folder.

    `max_length` bounds prompt + completion tokens: longer completions are cut at the end, and a pair whose prompt
    alone fills it is dropped (it would leave nothing to learn from). `precision` (auto, bf16, fp32) picks bf16
    autocast or plain float32 (montessori.precision.trains_in_bf16). `out_dir` appears only once training and
    saving have succeeded, and then holds only the model and tokenizer files.
    """
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.utils import disable_dropout_in_model

    _require_keys(schedule, SCHEDULE_KEYS, "dpo.schedule")
    _require_keys(lora, LORA_KEYS, "dpo.lora")
    pairs = read_frame(pairs)
    parallel = parallelism(gradient_checkpointing, fsdp_config, "dpo.fsdp_config")
    accumulation = dpo_accumulation(batch_size, gradient_accumulation, parallel.processes)
    if pairs.empty:
        raise ValueError(f"no preference pairs to train the teacher {teacher_path} on")
    started = time.monotonic()
    tokenizer, fmt = chat_format.load_tokenizer(teacher_path, chat_template, "teacher")
    model = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    # The Trainer turns the KV cache off in the config; saved that way, HF generation would run without it.
    use_cache = model.config.use_cache
    # DPO runs without dropout (TRL's default), but TRL's switch would also zero the LoRA dropout the config asks
    # for; so the base model's dropout goes off here, before any adapter exists, and TRL's switch is used only
    # without LoRA, where it also covers the reference model.
    disable_dropout_in_model(model)

    with tempfile.TemporaryDirectory(prefix="montessori-dpo-") as scratch:
        args = DPOConfig(
            output_dir=scratch,
            beta=beta,
            learning_rate=lr,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=epochs,
            max_length=max_length,
            lr_scheduler_type="warmup_stable_decay",
            disable_dropout=not lora["enabled"],
            bf16=trains_in_bf16(precision, default_device()),
            # transformers refuses bf16 without a GPU unless the CPU is named as the device.
            use_cpu=default_device().type == "cpu",
            fp16=False,
            seed=seed,
            data_seed=seed,
            dataloader_pin_memory=torch.cuda.is_available(),
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            # Without progress bars the Trainer prints each step's logs to stdout (PrinterCallback).
            disable_tqdm=True,
            **parallel.training_arguments(),
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=preference_dataset(pairs),
            processing_class=tokenizer,
            peft_config=_lora_config(lora) if lora["enabled"] else None,
        )
        n_trained = len(trainer.train_dataset)
        if n_trained == 0:
            raise ValueError(
                f"config key 'dpo.max_length' ({max_length}) is too short: every one of the {len(pairs)} pairs has a "
                "prompt of at least that many tokens, leaving no completion to train on; raise dpo.max_length"
            )
        if n_trained < len(pairs):
            log.warning(
                "%d of %d pairs dropped: their prompt alone fills dpo.max_length=%d tokens",
                len(pairs) - n_trained,
                len(pairs),
                max_length,
            )
        # The trainer drops those pairs while it is built, so the schedule is sized from the pairs it kept.
        total = optimizer_steps(n_trained, batch_size, accumulation, epochs, parallel.processes)
        plan = wsd_steps(total, schedule["warmup"], schedule["stable"], schedule["decay"], key="dpo.schedule")
        trainer.args.warmup_steps = plan.warmup
        trainer.args.lr_scheduler_kwargs = {
            "num_stable_steps": plan.stable,
            "num_decay_steps": plan.decay,
            "min_lr_ratio": schedule["min_lr_ratio"],
        }
        log.info("DPO on %d pairs: %d optimizer steps (WSD %s)", n_trained, total, plan)
        with warnings.catch_warnings():
            # transformers always passes the total too; the stable steps above already agree with it.
            warnings.filterwarnings("ignore", message="Both num_training_steps and num_stable_steps are specified")
            train_output = trainer.train()

    def write(folder: Path, state: dict[str, torch.Tensor]) -> None:
        if lora["enabled"]:
            _merged_lora_model(teacher_path, lora, state).save_pretrained(folder)
        else:
            trained = trainer.accelerator.unwrap_model(trainer.model)
            trained.config.use_cache = use_cache
            trained.save_pretrained(folder, state_dict=state)
        chat_format.save(tokenizer, fmt, folder)

    save_full_model(trainer, out_dir, write)
    summary = _summary(trainer, train_output, len(pairs), plan, bool(lora["enabled"]), time.monotonic() - started)
    summary.update(parallel.summary(), gradient_accumulation=accumulation)
    if is_main_process():
        log.info(
            "teacher saved to %s: %d steps, final loss %s, reward accuracy %s",
            out_dir,
            summary["steps"],
            summary["final_loss"],
            summary["reward_accuracy"],
        )
    return summary
