"""A teacher behind an OpenAI-compatible endpoint (the `strong_teacher` method: the paper's GPT-4o), as a Generator.

It has the interface of the local generators (montessori.generate), so synthesis sends it the same prompts with
the same sampling (temperature, top_p, presence_penalty, max_tokens, n) and applies the same filters. Each sample
is a request of its own (n=1, seeded like vLLM's j-th sample), so that every completion has its exact token
counts and finish reason and is cached on its own. Requests go `concurrency` at a time; a failing one is retried
with backoff (montessori.judges.retries) and a teacher that stays down fails the job, naming the endpoint.

Every completion is appended to a request cache (montessori.judges.cache: one file per job, safe on shared
filesystems) before it is used, keyed by the endpoint, the model, the messages and the sampling: a rerun, or a
job resumed after a crash, pays only for what is missing. The API key comes from the environment variable the
config names (`api_key_env`) and goes nowhere else: not into the config, the params, the cache or the logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from montessori.generate import Completion, Conversation, Sampling, check_conversations
from montessori.judges.cache import RecordCache
from montessori.judges.retries import TransientError, call_with_retries

log = logging.getLogger(__name__)

CONFIG_KEY = "models.strong_teacher"


def completion_record(response: Any) -> dict[str, Any]:
    """What the cache keeps of one n=1 chat completion."""
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if choices else None
    if message is None:
        raise TransientError(f"invalid response (no choices[0].message): {str(response)[:200]!r}")
    usage = getattr(response, "usage", None)
    return {
        "text": message.content or "",
        "finish_reason": choices[0].finish_reason or "stop",
        "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
        "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
    }


class APIGenerator:
    """Chat completions of `model` at `base_url`, cached in the directory `cache_dir` (this job's file labelled
    `writer`)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str,
        cache_dir: str | Path,
        writer: str = "teacher",
        timeout_seconds: float = 300.0,
        max_retries: int = 5,
        backoff_seconds: float = 2.0,
        concurrency: int = 8,
    ):
        from montessori.judges.openai_client import OpenAIBackend

        self.model_path = f"{model}@{base_url}"  # the teacher column of what it writes
        self.identity = f"openai:{model}@{base_url}"
        self.concurrency = concurrency
        self.cache = RecordCache(cache_dir, writer)
        self.client = OpenAIBackend(
            base_url, model, os.environ.get(api_key_env), api_key_env, timeout_seconds, max_retries, backoff_seconds,
            concurrency, role="teacher", config_key=CONFIG_KEY,
        )  # fmt: skip
        self.n_requests = 0
        self.n_cache_hits = 0

    def _request(self, conversation: Conversation, sampling: Sampling, seed: int) -> dict[str, Any]:
        return {
            "teacher": self.identity,
            "messages": conversation,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "presence_penalty": sampling.presence_penalty,
            "max_tokens": sampling.max_tokens,
            "seed": seed,
        }

    def _fetch(self, request: dict[str, Any], stop: threading.Event) -> dict[str, Any] | None:
        """One completion, or None once another request of the call has failed for good (the teacher is down:
        ask no more)."""
        if stop.is_set():
            return None
        options = {k: request[k] for k in ("temperature", "top_p", "presence_penalty", "max_tokens", "seed")}
        client = self.client
        try:
            # A malformed answer is retried like a failed request.
            return call_with_retries(
                lambda: completion_record(client.create(request["messages"], n=1, **options)),
                client.endpoint, client.max_retries, client.backoff_seconds, client.role, client.config_key,
            )  # fmt: skip
        except BaseException:
            stop.set()
            raise

    def generate(
        self, conversations: list[Conversation], sampling: Sampling, desc: str = "generate"
    ) -> list[list[Completion]]:
        check_conversations(conversations)
        # As vLLM seeds its j-th sample: every sample of the call gets its own seed.
        requests = [
            self._request(conversation, sampling, sampling.seed + index * sampling.draws + j)
            for index, conversation in enumerate(conversations)
            for j in range(sampling.draws)
        ]
        keys = [hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest() for r in requests]
        found = self.cache.get_many(keys)
        missing: dict[str, int] = {}  # key -> its first request
        for index, key in enumerate(keys):
            if key not in found:
                missing.setdefault(key, index)
        self.n_cache_hits += len(keys) - len(missing)
        if missing:
            pool, stop = ThreadPoolExecutor(max_workers=self.concurrency), threading.Event()
            try:
                futures = {pool.submit(self._fetch, requests[i], stop): key for key, i in missing.items()}
                with tqdm(total=len(futures), desc=desc, unit="request") as bar:
                    for future in as_completed(futures):
                        key, completion = futures[future], future.result()
                        if completion is None:
                            continue
                        record = {**completion, "created": time.time()}
                        self.cache.put(key, record)
                        found[key] = record
                        self.n_requests += 1
                        bar.update()
            except BaseException:
                stop.set()  # an interrupt, too, sends no more requests
                raise
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        samples = [
            Completion(found[k]["text"], found[k]["prompt_tokens"], found[k]["completion_tokens"],
                       found[k]["finish_reason"])
            for k in keys
        ]  # fmt: skip
        per = sampling.draws
        return [samples[i * per : (i + 1) * per] * (sampling.n // per) for i in range(len(conversations))]

    def close(self) -> None:
        log.info("teacher %s: %d requests, %d from the cache", self.identity, self.n_requests, self.n_cache_hits)
        self.client.close()
        self.cache.close()
