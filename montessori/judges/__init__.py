"""LLM judges: chat messages in, text (and, where the backend has them, top logprobs) out.

A judge is one of
- `openai`: any OpenAI-compatible endpoint (`base_url` + `model`). The API key is read only from the environment
  variable named by `api_key_env`, so no key ever sits in a config file;
- `local`: a model directory on this machine, either served by vLLM's OpenAI-compatible server (a child process
  on 127.0.0.1, reached through the same client code as `openai`) or loaded in-process with transformers (`hf`).

Every judgment is on disk as soon as it arrives, in a cache directory that concurrent jobs on a shared filesystem
share safely (montessori.judges.cache: one append-only file per job, read together), keyed by the judge's identity,
the full messages and the sampling parameters: a rerun, or a run resumed after a crash or an outage, pays only for
what is missing. Transient failures (connection errors, timeouts, HTTP 408/409/429/5xx, malformed
responses) are retried with exponential backoff; a judge that stays down raises `JudgeUnavailable`.

The modules, along the seams: config (JudgeConfig), base (types, errors, the backend protocol), cache (a generic
key -> record store), retries, openai_client (usable on its own, without a Judge), hf, vllm_server (the server
manager and its served backend), judge (the Judge facade, open_judge).
"""

from montessori.judges.base import Backend, JudgeError, JudgeUnavailable, Judgment, Messages, Params, TopLogprobs
from montessori.judges.cache import CacheError, RecordCache
from montessori.judges.config import KINDS, LOCAL_BACKENDS, JudgeConfig, judge_config
from montessori.judges.hf import HFBackend
from montessori.judges.judge import Judge, model_fingerprint, open_judge
from montessori.judges.openai_client import OpenAIBackend
from montessori.judges.retries import TransientError, call_with_retries
from montessori.judges.vllm_server import ServedBackend, VLLMServer

__all__ = [
    "KINDS",
    "LOCAL_BACKENDS",
    "Backend",
    "CacheError",
    "HFBackend",
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "JudgeUnavailable",
    "Judgment",
    "Messages",
    "OpenAIBackend",
    "Params",
    "RecordCache",
    "ServedBackend",
    "TopLogprobs",
    "TransientError",
    "VLLMServer",
    "call_with_retries",
    "judge_config",
    "model_fingerprint",
    "open_judge",
]
