"""Student SFT on a method's final training set, with TRL's SFTTrainer (loss on the assistant's answer only).

Examples reach the trainer tokenized by montessori.student.encode_example, the encoding of the warm-up and of
local influence: the same chat format and the same answer span (the response and its end-of-turn token).
A job of G processes (montessori.launch; FSDP on GPUs, DDP on CPU) trains on the same global batches, with the
loss normalised by the answer tokens of the whole global batch, and saves the same kind of folder
(montessori.parallel_training).
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
from montessori.io import read_frame
from montessori.parallel_training import DEFAULT_FSDP_CONFIG, is_main_process, parallelism, save_full_model
from montessori.precision import default_device, trains_in_bf16
from montessori.schedule import optimizer_steps, sft_accumulation, wsd_steps
from montessori.student import encode_example

log = logging.getLogger(__name__)


def tokenized_dataset(train: pd.DataFrame, tokenizer, max_length: int) -> Dataset:
    """TRL's pre-tokenized format: input_ids, and labels that are -100 outside the answer."""
    encoded = [encode_example(tokenizer, i, r, max_length) for i, r in zip(train["instruction"], train["response"])]
    return Dataset.from_dict({"input_ids": [e["input_ids"] for e in encoded], "labels": [e["labels"] for e in encoded]})


def train_student(
    student_path: str | Path,
    train: pd.DataFrame | str | Path,
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
    gradient_checkpointing: str | bool = "auto",
    fsdp_config: str | Path = DEFAULT_FSDP_CONFIG,
) -> dict[str, Any]:
    """Fine-tune the student on `train` (instruction, response; a frame or a parquet file) and save a plain HF
    model dir to `out_dir`, with the chat format it learned (`chat_template`, models.chat_template.student).

    `batch_size` is the effective (global) batch: `micro_batch_size` examples per device and forward pass, times
    gradient accumulation, times the job's processes (torchrun's WORLD_SIZE). `precision` (auto, bf16, fp32) picks
    bf16 autocast or plain float32 (montessori.precision.trains_in_bf16). `gradient_checkpointing` (auto = in
    multi-process jobs) and `fsdp_config` (the FSDP settings of multi-GPU jobs) are sft.gradient_checkpointing and
    sft.fsdp_config.
    """
    from trl import SFTConfig, SFTTrainer

    train = read_frame(train)
    if train.empty:
        raise ValueError(f"empty training set for student {student_path}")
    parallel = parallelism(gradient_checkpointing, fsdp_config, "sft.fsdp_config")
    processes = parallel.processes
    accumulation = sft_accumulation(batch_size, micro_batch_size, processes)
    started = time.monotonic()
    tokenizer, fmt = chat_format.load_tokenizer(student_path, chat_template, "student")
    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    use_cache = model.config.use_cache
    steps = wsd_steps(
        optimizer_steps(len(train), micro_batch_size, accumulation, epochs, processes),
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
            **parallel.training_arguments(),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=tokenized_dataset(train, tokenizer, max_length),
            processing_class=tokenizer,
        )
        result = trainer.train()

    def write(folder: Path, state: dict[str, torch.Tensor]) -> None:
        trained = trainer.accelerator.unwrap_model(trainer.model)
        trained.config.use_cache = use_cache
        trained.save_pretrained(folder, state_dict=state)
        chat_format.save(tokenizer, fmt, folder)

    save_full_model(trainer, out_dir, write)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {
        "examples": len(train),
        **parallel.summary(),
        "micro_batch_size": micro_batch_size,
        "gradient_accumulation": accumulation,
        "steps": result.global_step,
        "schedule": {"warmup": steps.warmup, "stable": steps.stable, "decay": steps.decay},
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "bf16": args.bf16,
        "seconds": round(time.monotonic() - started, 2),
    }
    if is_main_process():
        log.info("student SFT: %s", summary)
    return summary
