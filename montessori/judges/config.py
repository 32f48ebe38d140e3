"""The `judge` config section as a validated dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from montessori.config import ConfigError

KINDS = ("openai", "local")
LOCAL_BACKENDS = ("vllm", "hf")


@dataclass(frozen=True)
class JudgeConfig:
    """The `judge` config section. `model` is the endpoint's model name (openai) or a model directory (local)."""

    kind: str
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    local_backend: str = "vllm"
    max_tokens: int = 1024
    temperature: float = 0.0
    timeout_seconds: float = 300.0
    max_retries: int = 5
    backoff_seconds: float = 2.0
    concurrency: int = 4
    batch_size: int = 8
    dtype: str = "auto"
    vllm_kv_cache_gib: int = 1
    vllm_start_timeout_seconds: float = 900.0
    vllm_args: tuple[str, ...] = ()
    # A local judge's chat format (models.chat_template.judge; montessori.chat_format).
    chat_template: str = "auto"

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> None:
            raise ConfigError(f"judge.{key}: {why} (got {getattr(self, key)!r})")

        if self.kind not in KINDS:
            bad("kind", f"must be one of {', '.join(KINDS)}")
        if not self.model:
            bad("model", "must name the endpoint's model (openai) or a model directory (local)")
        if self.kind == "openai" and not self.base_url:
            bad("base_url", "an openai judge needs the endpoint URL, e.g. https://api.openai.com/v1")
        if self.local_backend not in LOCAL_BACKENDS:
            bad("local_backend", f"must be one of {', '.join(LOCAL_BACKENDS)}")
        if not self.api_key_env:
            bad("api_key_env", "must name an environment variable")
        for key in ("max_tokens", "concurrency", "batch_size", "vllm_kv_cache_gib"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        if self.max_retries < 0:
            bad("max_retries", "must be >= 0")
        for key in ("temperature", "backoff_seconds"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        for key in ("timeout_seconds", "vllm_start_timeout_seconds"):
            if getattr(self, key) <= 0:
                bad(key, "must be > 0")


def judge_config(raw: Mapping[str, Any]) -> JudgeConfig:
    """A JudgeConfig from the `judge` section of a config; unknown keys are errors, not silently ignored."""
    known = {f.name for f in dataclasses.fields(JudgeConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join('judge.' + k for k in unknown)}; allowed: {', '.join(sorted(known))}"
        )
    for key in ("kind", "model"):
        if key not in raw:
            raise ConfigError(f"judge.{key} is required")
    values = dict(raw)
    if "vllm_args" in values:
        values["vllm_args"] = tuple(str(a) for a in values["vllm_args"])
    return JudgeConfig(**values)


# The benchmarks graded by an LLM judge; each may override eval.judge under eval.<benchmark>.judge.
JUDGED_BENCHMARKS = ("alpaca_eval", "mt_bench")


def benchmark_judge(eval_config: Mapping[str, Any], benchmark: str) -> dict[str, Any]:
    """The judge section of one benchmark: eval.<benchmark>.judge merged over eval.judge (a defaulted config)."""
    if benchmark not in JUDGED_BENCHMARKS:
        raise ValueError(f"{benchmark!r} has no judge; judged benchmarks: {', '.join(JUDGED_BENCHMARKS)}")
    return {**eval_config["judge"], **eval_config[benchmark].get("judge", {})}


def judge_errors(config: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about each judged benchmark's merged judge (e.g. an openai judge without its
    base_url), each naming the config keys involved."""
    problems: dict[str, None] = {}
    for benchmark in JUDGED_BENCHMARKS:
        if benchmark not in config["eval"]["benchmarks"]:
            continue
        try:
            judge_config(benchmark_judge(config["eval"], benchmark))
        except ConfigError as e:
            overridden = bool(config["eval"][benchmark]["judge"])
            where = f"eval.{benchmark}.judge merged over eval.judge" if overridden else "eval.judge"
            problems[f"config key {where!r}: {e}"] = None
    return list(problems)
