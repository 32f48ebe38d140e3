"""The stages of a config for `montessori plan`: one Stage per kind of job, sized from the config's keys."""

from __future__ import annotations

import math
from typing import Any

from montessori.model_sizes import ModelShape
from montessori.plan import (
    DEFAULT_CANDIDATE_BATCH,
    JUDGE_HF_BATCH,
    JUDGE_PROMPT_TOKENS,
    LM_EVAL_BENCHMARKS,
    PROMPT_OVERHEAD_TOKENS,
    QUESTION_TOKENS,
    VLLM_SERVER_UTILIZATION,
    Stage,
    activation_bytes,
    checkpointing,
    inference_dtype_bytes,
    judged_alpaca_eval_methods,
    lora_parameters,
    training_bytes_per_value,
)

ADAMW_TRAINING = "float32 weights 4 + gradients 4 + AdamW moments 8"


def generation_stage(
    name: str, role: str, shape: ModelShape, jobs: int, backend: str, dtype: str, sequences: int, tokens: int,
    utilization: float,
) -> Stage:  # fmt: skip
    """vLLM: weights + KV for one max-length sequence at the least, more KV only buys concurrency; hf: the KV of
    a whole generate batch on one GPU."""
    width = inference_dtype_bytes(dtype)
    kv = shape.kv_bytes_per_token(width)
    common = {"role": role, "shape": shape, "jobs": jobs, "bytes_per_param": width, "sequence_tokens": tokens,
              "kv_per_token": kv, "holds": f"{'bf16' if width == 2 else 'float32'} weights; KV cache "
              f"{kv / 1024:.0f} KiB per token"}  # fmt: skip
    if backend == "vllm":
        return Stage(
            name=f"{name} (vLLM)", parallel="tp", work_item_bytes=kv * shape.max_position_embeddings, work_items=1,
            work_split="tensor", utilization=utilization, **common,
            note=f"at least one {shape.max_position_embeddings}-token sequence (vLLM's max_model_len); sequences "
            f"here are up to {tokens:,} tokens",
        )  # fmt: skip
    return Stage(
        name=f"{name} (hf)", parallel="one", work_item_bytes=kv * tokens, work_items=sequences, work_split="none",
        note=f"{sequences} sequences of up to {tokens:,} tokens per generate batch", **common,
    )  # fmt: skip


def _gc(section: dict[str, Any]) -> str:
    return ", gradient checkpointing" if checkpointing(section) else ", no gradient checkpointing"


def _synthesis(config: dict[str, Any], teacher: ModelShape) -> Stage:
    gen, syn = config["generation"], config["synthesis"]
    prompt = PROMPT_OVERHEAD_TOKENS + syn["in_context"] * math.ceil(syn["filters"]["max_chars"] / 3)
    tokens = max(prompt + syn["instruction"]["max_tokens"], QUESTION_TOKENS + syn["response"]["max_tokens"])
    jobs = 1 + config["iterations"] + len(config["final"]["methods"])  # warm-up slice, iterations, final sets
    sequences = gen["batch_size"] * syn["candidates_per_prompt"]
    return generation_stage(
        "synthesis", "teacher", teacher, jobs, gen["backend"], gen["dtype"], sequences, tokens,
        gen["vllm_gpu_memory_utilization"],
    )  # fmt: skip


def _warm_up(config: dict[str, Any], student: ModelShape) -> Stage:
    warm = config["warmup"]
    micro = warm.get("micro_batch_size")
    passes = f", in passes of {micro} per GPU" if micro else ""
    return Stage(
        name="warm-up", role="student", shape=student, jobs=1, bytes_per_param=16, holds=ADAMW_TRAINING,
        parallel="fsdp", work_item_bytes=activation_bytes(student, warm["max_length"], 4, checkpointing(warm)),
        work_items=warm["batch_size"], work_split="data", items_per_pass=micro,
        note=f"batch of {warm['batch_size']} x {warm['max_length']} tokens, split across GPUs{passes}{_gc(warm)}",
    )  # fmt: skip


def _influence(config: dict[str, Any], student: ModelShape) -> list[Stage]:
    """Both modes: `exact` (the engine's snapshot) and `first_order` (keys of another change, read if present)."""
    inf = config["influence"]
    candidate = activation_bytes(student, inf["max_length"], 4)
    # Reference evaluation is inference: only a batch's float32 logits (and one float64 row) stay.
    references = (inf["reference_batch_size"] * 4 + 8) * inf["max_length"] * student.vocab_size
    mode, k = inf.get("mode", "exact"), inf.get("candidate_batch_size", DEFAULT_CANDIDATE_BATCH)
    k_note = "" if "candidate_batch_size" in inf else " (assumed)"
    modes = {
        "exact": (28, "warm-up's 16 + in-memory snapshot of weights and AdamW moments 12"),
        "first_order": (20 + 4 * k, f"weights 4 + AdamW moments 8 + two gradient-sized buffers 8 + K={k}{k_note} "
                        f"per-example gradients {4 * k}"),
    }  # fmt: skip
    return [
        Stage(
            name=f"influence shard, {name}",
            role="student",
            shape=student,
            jobs=inf["shards"] * config["iterations"],
            bytes_per_param=per_param,
            holds=holds,
            parallel="fsdp",
            work_item_bytes=max(candidate, references),
            work_items=1,
            work_split="none",
            selected=name == mode,
            note=f"one candidate of {inf['max_length']} tokens (or a batch of {inf['reference_batch_size']} "
            "references) on every GPU",
        )  # fmt: skip
        for name, (per_param, holds) in modes.items()
    ]


def _dpo(config: dict[str, Any], teacher: ModelShape) -> Stage:
    dpo = config["dpo"]
    tokens = 2 * dpo["batch_size"] * dpo["max_length"]  # chosen and rejected
    work = activation_bytes(teacher, tokens, training_bytes_per_value(dpo["precision"]), checkpointing(dpo))
    if dpo["lora"]["enabled"]:
        adapters = lora_parameters(teacher, dpo["lora"]["r"])
        holds = f"frozen float32 weights 4 (no reference copy: TRL disables the adapters); {adapters:,} adapter "
        per_param, extra, holds = 4, 16 * adapters, holds + "parameters x 16"
    else:
        per_param, extra, holds = 20, 0, "policy 16 (as warm-up) + float32 reference model 4"
    return Stage(
        name="DPO", role="teacher", shape=teacher, jobs=config["iterations"], bytes_per_param=per_param, holds=holds,
        parallel="fsdp", work_item_bytes=work, work_items=1, work_split="none", extra_state_bytes=extra,
        note=f"{dpo['batch_size']} pairs (chosen + rejected) x {dpo['max_length']} tokens on every GPU{_gc(dpo)}",
    )  # fmt: skip


def _sft(config: dict[str, Any], student: ModelShape) -> Stage:
    sft = config["sft"]
    value_bytes = training_bytes_per_value(sft["precision"])
    example = activation_bytes(student, sft["max_length"], value_bytes, checkpointing(sft))
    return Stage(
        name="SFT", role="student", shape=student, jobs=len(config["final"]["methods"]), bytes_per_param=16,
        holds=ADAMW_TRAINING, parallel="fsdp", work_item_bytes=example, work_items=sft["micro_batch_size"],
        work_split="none",
        note=f"micro-batch of {sft['micro_batch_size']} x {sft['max_length']} tokens on every GPU{_gc(sft)}",
    )  # fmt: skip


def _evaluation(config: dict[str, Any], student: ModelShape) -> Stage:
    ev = config["eval"]
    kinds = sum(b in ev["benchmarks"] for b in (*LM_EVAL_BENCHMARKS, "alpaca_eval", "mt_bench"))
    # MT-Bench's second turn holds the first answer too.
    answer = max(ev["alpaca_eval"]["max_tokens"], 2 * ev["mt_bench"]["max_tokens"])
    return generation_stage(
        "evaluation", "student", student, len(ev["methods"]) * kinds, ev["backend"], config["generation"]["dtype"],
        ev["batch_size"], QUESTION_TOKENS + answer, config["generation"]["vllm_gpu_memory_utilization"],
    )  # fmt: skip


def _judge(config: dict[str, Any], judge_shape: ModelShape) -> Stage:
    ev, judge = config["eval"], config["eval"]["judge"]
    jobs = len(judged_alpaca_eval_methods(config)) + (len(ev["methods"]) if "mt_bench" in ev["benchmarks"] else 0)
    tokens = JUDGE_PROMPT_TOKENS + 2 * ev["alpaca_eval"]["max_tokens"] + judge["max_tokens"]
    return generation_stage(
        "local judge", "judge", judge_shape, jobs, judge["local_backend"], "auto", JUDGE_HF_BATCH, tokens,
        VLLM_SERVER_UTILIZATION,
    )  # fmt: skip


def build_stages(config: dict[str, Any], shapes: dict[str, ModelShape]) -> list[Stage]:
    """Every stage of a validated config, in pipeline order; `shapes` has teacher, student and a local judge."""
    teacher, student = shapes["teacher"], shapes["student"]
    stages = [_synthesis(config, teacher), _warm_up(config, student), *_influence(config, student)]
    stages += [_dpo(config, teacher), _sft(config, student), _evaluation(config, student)]
    if config["eval"]["judge"]["kind"] == "local":
        stages.append(_judge(config, shapes["judge"]))
    return stages
