"""The student: chat-formatted examples with loss on the answer only, per-example losses, and the AdamW state
that local influence restarts from (montessori.warm_up writes it).

Examples are rendered in the student's chat format (montessori.chat_format), the one put on its tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedModel

from montessori import chat_format
from montessori.precision import default_device

IGNORE_INDEX = -100
OPTIMIZER_FILE = "optimizer.pt"
MODEL_SUBDIR = "model"


def encode_example(tokenizer, instruction: str, response: str, max_length: int) -> dict[str, list[int]]:
    """`input_ids` of the chat-formatted exchange and `labels` that are -100 everywhere but the answer.

    The answer is the response and the end-of-turn token that closes it (the tokenizer's chat format says which:
    <|im_end|>, <|eot_id|>, or the EOS of `plain`); the template's formatting after that token is never generated
    by the model, so it carries no loss. Truncation keeps the start.
    """
    user = [{"role": "user", "content": instruction}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            f"{tokenizer.name_or_path}: the chat template with add_generation_prompt=True is not a prefix of the "
            "template of the full exchange, so the prompt/answer split is undefined; use a model whose template "
            f"appends the answer after the generation prompt (prompt ends {prompt[-40:]!r})"
        )
    # Prompt and answer are tokenized apart so that no token straddles the boundary, exactly as at generation
    # time, when the answer's tokens follow the generation prompt's.
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"the prompt alone is {len(prompt_ids)} tokens, so max_length={max_length} leaves no answer token to "
            f"train on; raise max_length (instruction starts {instruction[:60]!r})"
        )
    end = chat_format.end_of_turn_id(tokenizer)
    answer_end = answer_ids.index(end) + 1 if end in answer_ids else len(answer_ids)
    answer_labels = answer_ids[:answer_end] + [IGNORE_INDEX] * (len(answer_ids) - answer_end)
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_labels)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is marked by attention_mask and -100 labels, not by its id."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example["labels"])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def label_span(labels: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last column of `labels` that holds a label token in some row of the batch.

    Column 0 never counts: no position predicts the first token.
    """
    columns = (labels != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    if columns.numel() == 0:
        raise ValueError("the batch has no label token (every label is -100)")
    return max(int(columns[0]), 1), int(columns[-1]) + 1


def span_loss_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: the summed next-token loss of `logits` (batch, span, vocabulary) against `targets` (batch, span)."""
    # float64 loss: a float32 ulp at ~11 nats (an untrained model) is ~1e-6, the size of the smallest
    # influences; one row at a time keeps the float64 copy of the vocabulary-wide logits small.
    return torch.stack(
        [
            F.cross_entropy(row.double(), target, ignore_index=IGNORE_INDEX, reduction="sum")
            for row, target in zip(logits, targets)
        ]
    )


def token_loss_sums(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed next-token loss over label tokens, and how many label tokens there are.

    `batch` may live on the CPU; it is moved to the model's device.
    """
    batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
    labels = batch["labels"]
    start, end = label_span(labels)
    # The logits at position t predict token t + 1; only the span that holds labels needs them, and the
    # vocabulary-sized head is a large share of a small model's compute.
    keep = torch.arange(start - 1, end - 1, device=model.device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    targets = labels[:, start:end]
    return span_loss_sums(logits, targets), (targets != IGNORE_INDEX).sum(dim=1)


def example_losses(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example mean token loss over the label tokens."""
    sums, counts = token_loss_sums(model, batch)
    return sums / counts


def save_optimizer(
    optimizer: torch.optim.AdamW, model: PreTrainedModel, path: str | Path, state_dict: dict | None = None
) -> None:
    """The AdamW state with the parameter names it is keyed by and the hyper-parameters to rebuild it
    (`state_dict`: the state gathered from G ranks, montessori.sharding; default the optimizer's own)."""
    (group,) = optimizer.param_groups
    torch.save(
        {
            "param_names": [name for name, _ in model.named_parameters()],
            "hyperparameters": {
                "lr": group["lr"],
                "betas": tuple(group["betas"]),
                "eps": group["eps"],
                "weight_decay": group["weight_decay"],
            },
            "state_dict": optimizer.state_dict() if state_dict is None else state_dict,
        },
        path,
    )


def read_optimizer(model: torch.nn.Module, path: str | Path, mmap: bool = False) -> dict:
    """A saved optimizer.pt (save_optimizer), checked against `model`'s parameters: same names, same order.
    `mmap` maps the file instead of reading it (sharded ranks: each copies out only its shard)."""
    # Loaded to the CPU first, so that a state saved on a GPU also loads on a CPU-only node; load_state_dict
    # then moves every tensor to its parameter's device.
    saved = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    names = [name for name, _ in model.named_parameters()]
    if saved["param_names"] != names:
        missing = sorted(set(saved["param_names"]) ^ set(names))[:5]
        raise ValueError(
            f"{path}: the optimizer state was saved for other parameters than the model's "
            f"(first differences: {missing or 'same names, different order'}); save model and optimizer together"
        )
    return saved


def load_optimizer(model: PreTrainedModel, path: str | Path) -> torch.optim.AdamW:
    """Rebuild the saved AdamW over `model`'s parameters and restore its state; the parameter order must match."""
    saved = read_optimizer(model, path)
    optimizer = torch.optim.AdamW(model.parameters(), **saved["hyperparameters"])
    optimizer.load_state_dict(saved["state_dict"])
    return optimizer


def load_model(
    model_dir: str | Path, device: torch.device | None = None, chat_template: str = chat_format.AUTO
) -> tuple[PreTrainedModel, object]:
    """Model and tokenizer: float32 (montessori.precision says why), in eval mode (every dropout off, including
    during steps), on `device` (default: the GPU if there is one, else the CPU). The tokenizer carries the
    student's chat format: `chat_template` (models.chat_template.student), or the one a model trained here kept."""
    tokenizer, _ = chat_format.load_tokenizer(model_dir, chat_template, "student")
    return load_weights(model_dir, device), tokenizer


def load_weights(model_dir: str | Path, device: torch.device | None = None) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.to(device or default_device()).eval()
