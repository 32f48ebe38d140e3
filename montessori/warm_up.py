"""The warm-up: the student SFT'd on the untrained teacher's warm-up slice, saved with its AdamW state.

A plain PyTorch loop rather than TRL's SFTTrainer because local influence restarts from the exact AdamW state
(moments and step counts, keyed by a known parameter order); a trainer hides that state behind its own wrapping
and checkpoint layout.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from montessori import chat_format
from montessori.io import atomic_path
from montessori.parallel_training import uses_gradient_checkpointing, world_size
from montessori.student import (
    IGNORE_INDEX,
    MODEL_SUBDIR,
    OPTIMIZER_FILE,
    collate,
    encode_example,
    load_weights,
    save_optimizer,
    token_loss_sums,
)


def label_tokens(example: dict[str, list[int]]) -> int:
    """How many of the example's tokens carry loss (token_loss_sums' count; position 0 is never predicted)."""
    return sum(label != IGNORE_INDEX for label in example["labels"][1:])


def warm_up(
    model_path: str | Path,
    examples: pd.DataFrame | str | Path,
    out_dir: str | Path,
    lr: float,
    weight_decay: float = 0.0,
    epochs: int = 1,
    batch_size: int = 32,
    max_length: int = 1024,
    seed: int = 0,
    chat_template: str = chat_format.AUTO,
    micro_batch_size: int | None = None,
    gradient_checkpointing: str | bool = "auto",
) -> dict:
    """SFT the student on `examples` (instruction, response; a frame or a parquet file) at a constant lr; save
    out_dir/model (with the chat format it learned) and out_dir/optimizer.pt (the AdamW state local influence
    restarts from).

    Under torchrun (G = WORLD_SIZE > 1) the model and AdamW state are sharded with FSDP2 (montessori.sharding):
    rank r takes examples r, r + G, ... of each global batch and scales its summed token loss by
    G / (the loss tokens of the whole batch), so that FSDP's average of the ranks' gradients is exactly the
    one-process gradient of the batch's mean token loss. A rank left without an example (a last batch smaller
    than G) runs a zero-weight forward and backward so that every rank joins the same collectives. Rank 0 writes
    the gathered full state, in the one-process layout.

    Memory (warmup.micro_batch_size, warmup.gradient_checkpointing): each rank runs its share of a batch in
    forward/backward passes of at most `micro_batch_size` examples (None: the whole share at once), accumulating
    the gradient of summed token losses, so the step is the same; every rank makes as many passes as the largest
    share needs. Gradient checkpointing (auto: in multi-process jobs) recomputes each layer in the backward pass."""
    if isinstance(examples, (str, Path)):
        examples = pd.read_parquet(examples)
    if examples.empty:
        raise ValueError("warm_up: no examples (the warm-up slice is empty)")
    missing = {"instruction", "response"} - set(examples.columns)
    if missing:
        raise ValueError(f"warm_up: examples lack column(s) {sorted(missing)} (has {list(examples.columns)})")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"warmup.micro_batch_size must be at least 1 (got {micro_batch_size})")
    settings = dict(
        lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, max_length=max_length, seed=seed,
        micro_batch_size=micro_batch_size,
        gradient_checkpointing=uses_gradient_checkpointing(gradient_checkpointing, world_size()),
    )  # fmt: skip
    if world_size() == 1:
        return _warm_up(model_path, examples, out_dir, chat_template, None, **settings)
    from montessori.sharding import process_group

    with process_group() as device:
        return _warm_up(model_path, examples, out_dir, chat_template, device, **settings)


def _warm_up(
    model_path, examples, out_dir, chat_template, device, lr, weight_decay, epochs, batch_size, max_length, seed,
    micro_batch_size, gradient_checkpointing,
):  # fmt: skip
    # device None: one process on the default device; else this rank's device in a process group.
    started = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer, fmt = chat_format.load_tokenizer(model_path, chat_template, "student")
    sharded = device is not None
    if sharded:
        from montessori import sharding

        model = sharding.load_sharded_weights(model_path, device)
    else:
        model = load_weights(model_path)
    if gradient_checkpointing:
        # transformers recomputes layers only in training mode; the students have no dropout, so the loss is the same.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # a KV cache is of no use to training, and checkpointing refuses one
        model.train()
    world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if sharded else (1, 0)
    encoded = [
        encode_example(tokenizer, row.instruction, row.response, max_length) for row in examples.itertuples(index=False)
    ]
    tokens = [label_tokens(e) for e in encoded]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(encoded) // batch_size)
    loss = float("nan")
    with tqdm(total=epochs * steps_per_epoch, desc="warm-up", unit="step", disable=rank != 0) as bar:
        for _ in range(epochs):
            order = rng.permutation(len(encoded))
            for first in range(0, len(order), batch_size):
                members = order[first : first + batch_size]
                total = sum(tokens[i] for i in members)
                mine = members[rank::world]
                largest_share = -(-len(members) // world)
                micro = micro_batch_size or largest_share
                optimizer.zero_grad(set_to_none=True)
                pass_sums = []
                for start in range(0, largest_share, micro):
                    part, weight = mine[start : start + micro], world
                    if len(part) == 0:
                        part, weight = members[:1], 0
                    sums, _ = token_loss_sums(model, collate([encoded[i] for i in part], tokenizer.pad_token_id))
                    # world / total, left to right: one process divides by the batch's tokens exactly as before.
                    (sums.sum() * weight / total).backward()
                    pass_sums.append(sums.detach().sum() * (weight > 0))
                optimizer.step()
                summed = torch.stack(pass_sums).sum()
                if sharded:
                    torch.distributed.all_reduce(summed)
                loss = summed.item() / total
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update()
    if sharded:
        model_state, optimizer_state = sharding.gather_full_state(model, optimizer)
    else:
        model_state, optimizer_state = None, None
    if rank == 0:
        with atomic_path(out_dir, is_dir=True) as tmp:
            model.save_pretrained(tmp / MODEL_SUBDIR, state_dict=model_state)
            chat_format.save(tokenizer, fmt, tmp / MODEL_SUBDIR)
            save_optimizer(optimizer, model, tmp / OPTIMIZER_FILE, optimizer_state)
    if sharded:
        torch.distributed.barrier()
    return {
        "examples": len(encoded),
        "steps": epochs * steps_per_epoch,
        "final_loss": loss,
        "processes": world,
        "micro_batch_size": micro_batch_size,
        "gradient_checkpointing": gradient_checkpointing,
        "seconds": round(time.perf_counter() - started, 3),
    }
