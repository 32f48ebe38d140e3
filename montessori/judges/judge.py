"""The facade: a Judge answers conversations from its cache first and starts its backend only for what is missing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from montessori import chat_format
from montessori.chat_format import ChatFormat
from montessori.config import ConfigError
from montessori.judges.base import Backend, JudgeUnavailable, Judgment, Messages, Params, check_messages
from montessori.judges.cache import RecordCache
from montessori.judges.config import JudgeConfig
from montessori.judges.hf import HFBackend
from montessori.judges.openai_client import OpenAIBackend
from montessori.judges.vllm_server import ServedBackend, VLLMServer, extra_stop_ids


def model_fingerprint(model_dir: Path) -> str:
    """Names, sizes and modification times of the model's files: a model retrained in place misses the cache."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def judgment_record(judge_id: str, request: Mapping[str, Any], judgment: Judgment) -> dict[str, Any]:
    """A judgment as the cache stores it, with the request that produced it (to read or audit it later)."""
    return {
        "judge": judge_id,
        "request": dict(request),
        "text": judgment.text,
        "top_logprobs": judgment.top_logprobs,
        "created": time.time(),
    }


def cached_judgment(record: Mapping[str, Any]) -> Judgment:
    top = record.get("top_logprobs")
    top = None if top is None else [[(token, logprob) for token, logprob in step] for step in top]
    return Judgment(text=record["text"], top_logprobs=top, cached=True)


class Judge:
    """A judge with a disk cache. Build it with `open_judge`; close it (or use `with`) to free a local model.

    The backend starts at the first judgment missing from the cache, so a rerun whose judgments are all cached
    loads no model and starts no server.
    """

    def __init__(
        self, judge_id: str, identity: str, start: Callable[[], Backend], cache: RecordCache, config: JudgeConfig
    ):
        self.judge_id = judge_id
        self.identity = identity
        self.cache = cache
        self.config = config
        self.n_requests = 0
        self.n_cache_hits = 0
        self._start = start
        self._backend: Backend | None = None

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settings(self) -> dict[str, Any]:
        """Every setting this judge runs with and the identity that keys its cache, to record beside a result."""
        return {**dataclasses.asdict(self.config), "identity": self.identity}

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._start()
        return self._backend

    def judge(self, messages: Messages, max_tokens: int | None = None, top_logprobs: int = 0) -> Judgment:
        return self.judge_many([messages], max_tokens=max_tokens, top_logprobs=top_logprobs)[0]

    def judge_many(
        self,
        conversations: Sequence[Messages],
        max_tokens: int | None = None,
        top_logprobs: int = 0,
        desc: str = "judge",
    ) -> list[Judgment]:
        """One judgment per conversation, in order. `max_tokens` defaults to judge.max_tokens; `top_logprobs`
        asks for the k most likely tokens at each generated position (None in a judgment whose endpoint has none).
        """
        check_messages(conversations)
        params = Params(max_tokens or self.config.max_tokens, self.config.temperature, top_logprobs)
        requests = [{"judge": self.identity, "messages": list(m), **dataclasses.asdict(params)} for m in conversations]
        keys = [
            hashlib.sha256(json.dumps(r, sort_keys=True, ensure_ascii=False).encode()).hexdigest() for r in requests
        ]
        found = self.cache.get_many(keys)
        if len(found) < len(set(keys)) and self.cache.refresh():
            # Jobs running beside this one may have paid for some of them since the cache was opened.
            found = self.cache.get_many(keys)
        results: dict[int, Judgment] = {}
        missing: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            if key in found:
                results[index] = cached_judgment(found[key])
            else:
                missing.setdefault(key, []).append(index)
        self.n_cache_hits += len(results)
        if not missing:
            return [results[i] for i in range(len(conversations))]
        todo = list(missing)
        done = 0
        try:
            with tqdm(total=len(todo), desc=desc, unit="judgment") as bar:
                conversations_todo = [requests[missing[key][0]]["messages"] for key in todo]
                for position, judgment in self.backend.complete(conversations_todo, params):
                    key = todo[position]
                    self.cache.put(key, judgment_record(self.judge_id, requests[missing[key][0]], judgment))
                    self.n_requests += 1
                    done += 1
                    for index in missing[key]:
                        results[index] = judgment
                    bar.update()
        except JudgeUnavailable as e:
            raise JudgeUnavailable(
                f"{e}. {done} of the {len(todo)} new judgments of this call, and all earlier ones, are saved in"
                f" {self.cache.directory}: rerun to resume"
            ) from e
        return [results[i] for i in range(len(conversations))]

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        self.cache.close()


def _local_model_dir(model: str) -> Path:
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"judge.model: {model!r} is not a model directory (no config.json there)")
    return path.resolve()


def local_chat_format(model_dir: Path, spec: str) -> tuple[ChatFormat, list[int]]:
    """The chat format a local judge renders with (models.chat_template.judge, or the one a model trained here
    kept) and the stop token ids a vLLM server needs on top of the model's EOS to end a turn in it."""
    tokenizer, fmt = chat_format.load_tokenizer(model_dir, spec, "judge")
    return fmt, extra_stop_ids(model_dir, tokenizer, fmt.end_of_turn)


def open_judge(
    config: JudgeConfig, cache_path: str | Path, writer: str = "judge", tensor_parallel_size: int = 1
) -> Judge:
    """The judge `config` describes, caching into the directory `cache_path` (montessori.judges.cache; `writer`
    labels this process's file there, e.g. the job). A local model is loaded (or its vLLM server started, which
    takes a while) at the first uncached judgment; `Judge.close()` frees it. A local vLLM judge spreads over
    `tensor_parallel_size` GPUs (the job's, montessori.launch.tensor_parallel_size); the hf one runs on one."""
    retry = dict(
        timeout_seconds=config.timeout_seconds,
        max_retries=config.max_retries,
        backoff_seconds=config.backoff_seconds,
        concurrency=config.concurrency,
    )
    start: Callable[[], Backend]
    if config.kind == "openai":
        judge_id = f"openai:{config.model}@{config.base_url}"
        identity = judge_id

        def start() -> Backend:
            api_key = os.environ.get(config.api_key_env)
            return OpenAIBackend(config.base_url, config.model, api_key, config.api_key_env, **retry)

    else:
        model_dir = _local_model_dir(config.model)
        judge_id = f"local-{config.local_backend}:{model_dir.name}"
        fmt, stop_ids = local_chat_format(model_dir, config.chat_template)
        # Another chat format renders other prompts, and the judge answers them differently.
        identity = f"{judge_id}#{model_fingerprint(model_dir)}#chat-{fmt.digest}"

        def start() -> Backend:
            if config.local_backend == "hf":
                return HFBackend(str(model_dir), config.batch_size, config.dtype, config.chat_template)
            server = VLLMServer(
                model_dir,
                config.dtype,
                config.vllm_kv_cache_gib,
                config.vllm_start_timeout_seconds,
                config.vllm_args,
                chat_template=fmt.template,
                tensor_parallel_size=tensor_parallel_size,
            )
            extra = {"stop_token_ids": stop_ids} if stop_ids else None
            client = OpenAIBackend(
                server.base_url,
                server.model_name,
                None,
                config.api_key_env,
                use_proxy_env=False,
                extra_body=extra,
                **retry,
            )
            return ServedBackend(server, client)

    return Judge(judge_id, identity, start, RecordCache(cache_path, writer), config)
