"""`montessori plan`: the accelerator memory and GPU count of every stage of a config, and the run's totals.

Each stage is one kind of job: its model (sizes from config.json, montessori.model_sizes), the bytes per
parameter it holds, the work memory that comes on top (activations of training, the KV cache of generation) and
how the job may span GPUs (FSDP: any count; vLLM tensor parallelism: 1, 2, 4 or 8 dividing the heads; hf
generation: one). The GPU count is the smallest at which every GPU's share fits. montessori.plan_stages says
which stages a config has; montessori.plan_report prints them with the assumptions (ASSUMPTIONS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from montessori.config import validate_config
from montessori.methods import SELF_INSTRUCT
from montessori.model_sizes import ModelShape, model_shape

GB = 1e9
CUDA_CONTEXT = 1.0 * GB  # per GPU: CUDA context, cuBLAS/NCCL workspaces
TRAINING_HEADROOM = 0.90  # a training job may fill 90% of a GPU; the rest is allocator fragmentation
VLLM_NON_KV = 2.0 * GB  # per GPU: vLLM's activation peak, CUDA graphs, sampler, context
VLLM_SERVER_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization (the local judge server does not set it)
JUDGE_HF_BATCH = 8  # montessori.judges.JudgeConfig.batch_size
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
MAX_FSDP_GPUS = 64
DEFAULT_CANDIDATE_BATCH = 8  # influence.candidate_batch_size when the config has no such key
ALPACA_EVAL_ITEMS, MT_BENCH_QUESTIONS, MT_BENCH_TURNS = 805, 80, 2
LM_EVAL_BENCHMARKS = ("arc_challenge", "gsm8k", "hellaswag", "gpqa", "mmlu")
# Prompt lengths the config does not bound, in tokens: the teacher prompt (instructions plus in-context examples
# of at most filters.max_chars characters, ~3 characters a token), an AlpacaEval/MT-Bench question, and the
# judge's prompt around the answers it compares.
PROMPT_OVERHEAD_TOKENS, QUESTION_TOKENS, JUDGE_PROMPT_TOKENS = 256, 512, 1024


@dataclass(frozen=True)
class Stage:
    name: str
    role: str
    shape: ModelShape
    jobs: int
    bytes_per_param: float
    holds: str
    parallel: str  # fsdp | tp | one
    work_item_bytes: float  # activations of one example (training) or KV of one sequence (generation)
    work_items: int
    work_split: str  # data: the items split across GPUs; none: every GPU holds them all; tensor: each /G
    items_per_pass: int | None = None  # data: a GPU holds at most this many of its items at once (micro-batches)
    extra_state_bytes: float = 0.0  # state beyond bytes_per_param x parameters (LoRA adapters)
    utilization: float = TRAINING_HEADROOM
    note: str = ""
    selected: bool = True
    sequence_tokens: int = 0  # generation: the longest sequence this stage's jobs write
    kv_per_token: int = 0

    @property
    def state_bytes(self) -> float:
        return self.bytes_per_param * self.shape.parameters + self.extra_state_bytes

    @property
    def work_bytes(self) -> float:
        """The work one GPU alone would hold at once."""
        return self.work_item_bytes * min(self.work_items, self.items_per_pass or self.work_items)

    def candidate_gpus(self) -> list[int]:
        if self.parallel == "fsdp":
            return list(range(1, MAX_FSDP_GPUS + 1))
        if self.parallel == "tp":
            heads = (self.shape.num_heads, self.shape.num_kv_heads)
            return [g for g in TENSOR_PARALLEL_SIZES if all(h % g == 0 for h in heads)]
        return [1]

    def work_per_gpu(self, gpus: int) -> float:
        if self.work_split == "data":
            share = math.ceil(self.work_items / gpus)
            return min(share, self.items_per_pass or share) * self.work_item_bytes
        if self.work_split == "tensor":
            return self.work_bytes / gpus
        return self.work_bytes

    def per_gpu_bytes(self, gpus: int) -> float:
        work = self.work_per_gpu(gpus)
        fixed = VLLM_NON_KV if self.parallel == "tp" else CUDA_CONTEXT
        if self.parallel == "fsdp" and gpus > 1:
            # FSDP gathers one unit's full fp32 parameters at a time, prefetches the next and reduces one's grads.
            fixed += 3 * 4 * max(self.shape.layer_parameters, self.shape.embedding_parameters)
        return self.state_bytes / gpus + work + fixed

    def gpus(self, gpu_bytes: float) -> int | None:
        """The fewest GPUs of `gpu_bytes` the job fits on, None if no allowed count suffices."""
        budget = self.utilization * gpu_bytes
        return next((g for g in self.candidate_gpus() if self.per_gpu_bytes(g) <= budget), None)

    def kv_room_sequences(self, gpus: int, gpu_bytes: float) -> int:
        """vLLM: how many of this stage's longest sequences the KV space left on `gpus` GPUs holds at once."""
        room = gpus * (self.utilization * gpu_bytes - VLLM_NON_KV) - self.state_bytes
        return max(0, int(room // (self.sequence_tokens * self.kv_per_token)))


def load_config(path: str | Path) -> dict[str, Any]:
    """The config `snakemake --configfile PATH` runs: PATH alone (it replaces the Snakefile's config.yaml), with
    the schema's defaults filled in."""
    with open(path) as f:
        return validate_config(yaml.safe_load(f) or {})


def training_bytes_per_value(precision: str) -> int:
    """Activations under bf16 autocast (auto: on GPUs) are bf16; fp32 training keeps float32 ones."""
    return 4 if precision == "fp32" else 2


def activation_bytes(shape: ModelShape, tokens: int, value_bytes: int, checkpointing: bool = False) -> float:
    """Activations a backward pass needs for `tokens` tokens, plus the float32 logits and their gradient. With
    gradient checkpointing only each layer's input stays, and one layer's activations are recomputed at a time."""
    per_layer = shape.activation_values_per_token * value_bytes
    if checkpointing:
        layers = shape.num_layers * shape.hidden_size * value_bytes + per_layer
    else:
        layers = shape.num_layers * per_layer
    return tokens * (layers + 2 * shape.vocab_size * 4)


def checkpointing(section: dict[str, Any]) -> bool:
    """A `gradient_checkpointing` key, where a config has one (on, or auto: on for the multi-GPU jobs planned here)."""
    return section.get("gradient_checkpointing", False) in (True, "auto", "on")


def lora_parameters(shape: ModelShape, rank: int) -> int:
    """LoRA adapters of every linear layer of the decoder ("all-linear": not the lm_head): r x (in + out) each."""
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return shape.num_layers * rank * per_layer


def inference_dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def judged_alpaca_eval_methods(config: dict[str, Any]) -> list[str]:
    """Methods whose AlpacaEval answers the judge compares: all but the reference itself (its own outputs tie)."""
    ev = config["eval"]
    if "alpaca_eval" not in ev["benchmarks"]:
        return []
    if ev["alpaca_eval"]["reference"] == "self_instruct":
        return [m for m in ev["methods"] if m != SELF_INSTRUCT]
    return list(ev["methods"])


def totals(config: dict[str, Any]) -> dict[str, int]:
    inf, c, ev = config["influence"], config["synthesis"]["candidates_per_prompt"], config["eval"]
    per_iteration = inf["n_prompts"] * c
    limit = ev["limit"]
    alpaca_items = min(limit["alpaca_eval"] or ALPACA_EVAL_ITEMS, ALPACA_EVAL_ITEMS)
    questions = min(limit["mt_bench"] or MT_BENCH_QUESTIONS, MT_BENCH_QUESTIONS)
    mt_methods = len(ev["methods"]) if "mt_bench" in ev["benchmarks"] else 0
    return {
        "prompts": inf["n_prompts"],
        "candidates_per_prompt": c,
        "iterations": config["iterations"],
        "candidates_per_iteration": per_iteration,
        "candidates": per_iteration * config["iterations"],
        "pairs_per_prompt": (c // 2) * ((c + 1) // 2),
        "pairs_per_iteration": inf["n_prompts"] * (c // 2) * ((c + 1) // 2),
        "pairs": inf["n_prompts"] * (c // 2) * ((c + 1) // 2) * config["iterations"],
        "alpaca_eval_items": alpaca_items,
        "alpaca_eval_methods": len(judged_alpaca_eval_methods(config)),
        "alpaca_eval_calls": alpaca_items * len(judged_alpaca_eval_methods(config)),
        "mt_bench_questions": questions,
        "mt_bench_methods": mt_methods,
        "mt_bench_calls": questions * MT_BENCH_TURNS * mt_methods,
    }


def model_shapes(config: dict[str, Any]) -> dict[str, ModelShape]:
    shapes = {role: model_shape(config["models"][role], f"models.{role}") for role in ("teacher", "student")}
    if config["eval"]["judge"]["kind"] == "local":
        shapes["judge"] = model_shape(config["eval"]["judge"]["model"], "eval.judge.model")
    return shapes
