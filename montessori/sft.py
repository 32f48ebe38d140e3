"""Student SFT on a method's final training set, with TRL's SFTTrainer (loss on the assistant's answer only).

Examples reach the trainer tokenized by montessori.student.encode_example, the encoding of the warm-up and of
local influence: the same chat format and the same answer span (the response and its end-of-turn token).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from montessori import chat_format
from montessori.io import atomic_path
from montessori.precision import default_device, trains_in_bf16
from montessori.schedule import optimizer_steps, wsd_steps
from montessori.student import encode_example

log = logging.getLogger(__name__)


def tokenized_dataset(train: pd.DataFrame, tokenizer, max_length: int) -> Dataset:
    """TRL's pre-tokenized format: input_ids, and labels that are -100 outside the answer."""
    encoded = [encode_example(tokenizer, i, r, max_length) for i, r in zip(train["instruction"], train["response"])]
    return Dataset.from_dict({"input_ids": [e["input_ids"] for e in encoded], "labels": [e["labels"] for e in encoded]})


def train_student(
    student_path: str | Path,
    train: pd.DataFrame,
    out_dir: str | Path,
    *,
    lr: float,
    epochs: float,
    batch_size: int,
    micro_batch_size: int,
    max_length: int,
    schedule: Mapping[str, float],
    seed: int,
    precision: str = "auto",
    chat_template: str = chat_format.AUTO,
) -> dict[str, Any]:
    """Fine-tune the student on `train` (instruction, response) and save a plain HF model dir to `out_dir`, with
    the chat format it learned (`chat_template`, models.chat_template.student).

    `batch_size` is the effective batch; it is reached by gradient accumulation over `micro_batch_size`.
    `precision` (auto, bf16, fp32) picks bf16 autocast or plain float32 (montessori.precision.trains_in_bf16).
    """
    from trl import SFTConfig, SFTTrainer

    if train.empty:
        raise ValueError(f"empty training set for student {student_path}")
    if batch_size % micro_batch_size:
        raise ValueError(f"sft.batch_size {batch_size} must be a multiple of sft.micro_batch_size {micro_batch_size}")
    accumulation = batch_size // micro_batch_size
    started = time.monotonic()
    tokenizer, fmt = chat_format.load_tokenizer(student_path, chat_template, "student")
    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    use_cache = model.config.use_cache
    steps = wsd_steps(
        optimizer_steps(len(train), micro_batch_size, accumulation, epochs),
        schedule["warmup"],
        schedule["stable"],
        schedule["decay"],
        key="sft.schedule",
    )
    with tempfile.TemporaryDirectory(prefix="montessori-sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            learning_rate=lr,
            num_train_epochs=epochs,
            per_device_train_batch_size=micro_batch_size,
            gradient_accumulation_steps=accumulation,
            max_length=max_length,
            lr_scheduler_type="warmup_stable_decay",
            warmup_steps=steps.warmup,
            lr_scheduler_kwargs={
                "num_stable_steps": steps.stable,
                "num_decay_steps": steps.decay,
                "min_lr_ratio": schedule["min_lr_ratio"],
            },
            weight_decay=0.0,
            bf16=trains_in_bf16(precision, default_device()),
            # transformers refuses bf16 without a GPU unless the CPU is named as the device.
            use_cpu=default_device().type == "cpu",
            seed=seed,
            data_seed=seed,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=tokenized_dataset(train, tokenizer, max_length),
            processing_class=tokenizer,
        )
        result = trainer.train()
    trained = trainer.model
    trained.config.use_cache = use_cache
    with atomic_path(out_dir, is_dir=True) as tmp:
        trained.save_pretrained(tmp)
        chat_format.save(tokenizer, fmt, tmp)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {
        "examples": len(train),
        "steps": result.global_step,
        "schedule": {"warmup": steps.warmup, "stable": steps.stable, "decay": steps.decay},
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "bf16": args.bf16,
        "seconds": round(time.monotonic() - started, 2),
    }
    log.info("student SFT: %s", summary)
    return summary
