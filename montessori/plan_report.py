"""The text of `montessori plan`: models, one row per stage, what each row holds, the totals, the assumptions."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from montessori.plan import (
    CUDA_CONTEXT,
    GB,
    MAX_FSDP_GPUS,
    TRAINING_HEADROOM,
    VLLM_NON_KV,
    VLLM_SERVER_UTILIZATION,
    Stage,
    load_config,
    model_shapes,
    totals,
)
from montessori.plan_stages import build_stages

_MEMORY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(GB|GiB|G)?\s*$", re.IGNORECASE)
HOW = {"fsdp": "FSDP", "tp": "TP", "one": "single"}

WIDTH = 116
ASSUMPTIONS = (
    f"GB = 10^9 bytes. A training job fits when each GPU's share is at most {TRAINING_HEADROOM:.0%} of its memory "
    f"(the rest: allocator fragmentation), {CUDA_CONTEXT / GB:.0f} GB of it CUDA context. FSDP (any number of GPUs) "
    "shards weights, gradients, optimizer state and the influence snapshot, and each GPU also holds 3 unsharded fp32 "
    "units (the larger of a layer and the embedding). Activations, without gradient checkpointing: (6 h + 4 q + 2 kv "
    "+ 4 i) values per token per layer (h hidden, q = heads x head_dim, kv = KV heads x head_dim, i MLP width) plus 2 "
    "float32 logits per vocabulary entry, at max_length tokens per example (an upper bound: batches pad to their "
    "longest example); float32 for warm-up and influence, bf16 for DPO and SFT under precision auto (GPUs) or bf16. "
    "Warm-up splits its batch across GPUs; DPO (batch_size pairs) and SFT (micro_batch_size) hold their per-device "
    "batch on every GPU; influence holds one candidate (every rank steps on the same one) or one reference batch. "
    f"vLLM: weights + {VLLM_NON_KV / GB:.0f} GB per GPU (activation peak, CUDA graphs) + KV cache within "
    "generation.vllm_gpu_memory_utilization of each GPU "
    f"({VLLM_SERVER_UTILIZATION}, vLLM's default, for the local judge's server); it must hold one sequence of "
    "max_position_embeddings tokens (its default max_model_len) and runs as many sequences at once as the rest "
    "holds; tensor parallelism must divide the attention and KV heads (1, 2, 4 or 8 GPUs). hf generation keeps a "
    "whole generate batch's KV cache on one GPU. Prompt lengths the config does not bound are estimated "
    "(montessori/plan.py)."
)
LEGEND = (
    "state: weights and what training keeps per parameter; work: activations (training) or KV cache (generation); "
    "one job: all of it on one GPU; GPUs: the fewest of this size it fits on (FSDP: any count; TP: vLLM tensor "
    "parallelism, 1/2/4/8; single: hf generation, one GPU); per GPU: each one's share at that count."
)


def parse_memory(text: str) -> float:
    """Bytes of `--gpu-memory`: 80GB (10^9 bytes), 80GiB (2^30), or a bare number of GB."""
    match = _MEMORY.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--gpu-memory {text!r}: expected a size such as 80GB, 141GB or 80GiB")
    unit = (match.group(2) or "GB").lower()
    return float(match.group(1)) * (2**30 if unit == "gib" else GB)


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _gb(value: float) -> str:
    return f"{value / GB:,.1f}"


def _row(stage: Stage, gpu_bytes: float) -> list[str]:
    gpus = stage.gpus(gpu_bytes)
    name = stage.name + ("" if stage.selected else " (alt.)")
    share = _gb(stage.per_gpu_bytes(gpus)) if gpus else "-"
    count = f"{gpus} {HOW[stage.parallel]}" if gpus else f"none of {HOW[stage.parallel]}"
    per_param = f"{stage.bytes_per_param:g}"
    return [name, stage.role, str(stage.jobs), per_param, _gb(stage.state_bytes), _gb(stage.work_bytes),
            _gb(stage.per_gpu_bytes(1)), count, share]  # fmt: skip


def _table(rows: list[list[str]]) -> list[str]:
    header = ["stage", "model", "jobs", "B/param", "state GB", "work GB", "one job GB", "GPUs", "per GPU GB"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 7}

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return [line(header).rstrip(), *(line(r).rstrip() for r in rows)]


def _details(stage: Stage, gpu_bytes: float) -> str:
    text = f"  {stage.name}: {stage.bytes_per_param:g} B/param = {stage.holds}; work: {stage.note}"
    gpus = stage.gpus(gpu_bytes)
    if gpus is None:
        limit = MAX_FSDP_GPUS if stage.parallel == "fsdp" else max(stage.candidate_gpus())
        return text + f"; does not fit {limit} GPUs: {_gb(stage.per_gpu_bytes(limit))} GB on each"
    work = stage.work_per_gpu(gpus)
    if stage.parallel == "fsdp" and work > 0.5 * stage.utilization * gpu_bytes:
        text += (
            f"; activations take {_gb(work)} GB of each of the {gpus} GPUs: a smaller (micro-)batch or max_length, "
            "or gradient checkpointing, would need fewer"
        )
    if stage.parallel == "tp":
        room = stage.kv_room_sequences(gpus, gpu_bytes)
        text += f"; KV room on {gpus} GPU{'s' if gpus > 1 else ''}: {room:,} such sequences at once"
    return text


def render(config_path: str | Path, gpu_bytes: float) -> str:
    config = load_config(config_path)
    shapes = model_shapes(config)
    stages = build_stages(config, shapes)
    lines = [
        f"montessori plan: {config_path} (experiment {config['experiment']}), GPUs of {_gb(gpu_bytes)} GB",
        "",
        "models",
    ]
    for role, shape in shapes.items():
        lines.append(f"  {role:<8} {shape.name}: {shape.parameters:,} parameters")
        lines.append(f"  {'':<8} {shape.geometry}")
        lines.append(f"  {'':<8} config.json: {shape.source}")
    judge = config["eval"]["judge"]
    if judge["kind"] != "local":
        lines.append(f"  judge    {judge['model']} at {judge['base_url']} (remote: no accelerator here)")
    lines += ["", *_table([_row(s, gpu_bytes) for s in stages])]
    mode = config["influence"].get("mode", "exact")
    lines += [
        f"  (alt.): the influence mode this config does not select (influence.mode: {mode}).",
        textwrap.fill(LEGEND, WIDTH, initial_indent="  ", subsequent_indent="  "),
        "",
        "what each stage holds",
        *(textwrap.fill(_details(s, gpu_bytes), WIDTH, subsequent_indent="    ") for s in stages),
        "",
        *(textwrap.fill(line, WIDTH, subsequent_indent=" " * 19) for line in _totals_lines(config)),
        "",
        "assumptions",
        textwrap.fill(ASSUMPTIONS, WIDTH, initial_indent="  ", subsequent_indent="  "),
    ]
    return "\n".join(lines)


def _totals_lines(config: dict) -> list[str]:
    t = totals(config)
    shards = config["influence"]["shards"]
    alpaca = f"AlpacaEval {_n(t['alpaca_eval_items'], 'item')} x {_n(t['alpaca_eval_methods'], 'judged method')}"
    mt = f"MT-Bench {_n(t['mt_bench_questions'], 'question')} x 2 turns x {_n(t['mt_bench_methods'], 'method')}"
    calls = t["alpaca_eval_calls"] + t["mt_bench_calls"]
    return [
        "totals",
        f"  candidates       at least {t['candidates_per_iteration']:,} per iteration ({t['prompts']:,} pairable "
        f"prompts x {t['candidates_per_prompt']}; more prompts where one yields fewer than 2 usable), "
        f"{t['candidates']:,} over {t['iterations']} iterations; "
        f"{_n(shards, 'influence shard')} of at most ~{-(-t['candidates_per_iteration'] // shards):,} each",
        f"  influence steps  at most {t['candidates']:,} (one AdamW step per usable candidate of a pairable prompt)",
        f"  DPO pairs        at most {t['pairs_per_iteration']:,} per iteration ({t['prompts']:,} prompts x "
        f"floor({t['candidates_per_prompt']}/2) x ceil({t['candidates_per_prompt']}/2) = {t['pairs_per_prompt']}), "
        f"{t['pairs']:,} overall",
        f"  judge calls      {alpaca} = {t['alpaca_eval_calls']:,}; {mt} = {t['mt_bench_calls']:,}; total {calls:,}",
    ]
