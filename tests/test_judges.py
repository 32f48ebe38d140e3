import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

from montessori.config import ConfigError
from montessori.generate import Sampling, load_generator
from montessori.judges import JudgeConfig, JudgeError, JudgeUnavailable, Judgment, judge_config, open_judge

KEY_ENV = "MONTESSORI_TEST_JUDGE_KEY"
QUESTION = [{"role": "user", "content": "Rate this answer."}]
OTHER_QUESTION = [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "Rate this one."}]

# (HTTP status, body, seconds to wait before answering)
Reply = tuple[int, bytes, float]


def chat_response(text: str, top_logprobs: list[list[tuple[str, float]]] | None = None) -> bytes:
    """An OpenAI chat completion as an endpoint sends it."""
    logprobs = None
    if top_logprobs is not None:
        logprobs = {
            "content": [
                {
                    "token": step[0][0],
                    "logprob": step[0][1],
                    "bytes": None,
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in step],
                }
                for step in top_logprobs
            ]
        }
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-judge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return json.dumps(body).encode()


class FakeEndpoint:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers each request with `reply(request body)` and
    keeps every request (body and Authorization header) it received."""

    def __init__(self, reply: Callable[[dict[str, Any]], Reply]):
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"body": body, "authorization": self.headers.get("Authorization")})
                status, payload, delay = endpoint.reply(body)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    """A fake endpoint whose reply tests set through `endpoint.reply`; by default it rates everything 7."""
    server = FakeEndpoint(lambda body: (200, chat_response("Rating: [[7]]"), 0.0))
    yield server
    server.close()


def openai_config(endpoint: FakeEndpoint, **overrides: Any) -> JudgeConfig:
    options = dict(
        kind="openai",
        model="fake-judge",
        base_url=endpoint.base_url,
        api_key_env=KEY_ENV,
        max_tokens=32,
        timeout_seconds=5.0,
        max_retries=2,
        backoff_seconds=0.01,
        concurrency=2,
    )
    return JudgeConfig(**{**options, **overrides})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"kind": "cloud", "model": "m"}, "judge.kind"),
        ({"kind": "openai", "model": "m"}, "judge.base_url"),
        ({"kind": "local", "model": "m", "local_backend": "sglang"}, "judge.local_backend"),
        ({"kind": "openai", "model": "m", "base_url": "http://x", "max_retries": -1}, "judge.max_retries"),
        ({"kind": "openai", "model": "m", "base_url": "http://x", "timeout_seconds": 0}, "judge.timeout_seconds"),
        ({"kind": "openai", "model": "m", "base_url": "http://x", "tempreature": 0}, "judge.tempreature"),
        ({"kind": "openai", "base_url": "http://x"}, "judge.model is required"),
    ],
)
def test_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        judge_config(raw)


def test_config_from_mapping():
    raw = {"kind": "local", "model": "m", "local_backend": "hf", "vllm_args": ["--max-model-len", 4096]}
    config = judge_config(raw)
    assert config.vllm_args == ("--max-model-len", "4096")
    assert config.temperature == 0.0 and config.api_key_env == "OPENAI_API_KEY"


def test_local_judge_needs_a_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="judge.model.*no config.json"):
        open_judge(JudgeConfig(kind="local", model=str(tmp_path / "missing")), tmp_path / "cache.sqlite")


def test_openai_judge_sends_greedy_requests_with_the_key_from_the_environment(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sekrit")
    with open_judge(openai_config(endpoint), tmp_path / "cache.sqlite") as judge:
        judgment = judge.judge(QUESTION)
    assert judgment.text == "Rating: [[7]]" and not judgment.cached and judgment.top_logprobs is None
    assert judge.judge_id == f"openai:fake-judge@{endpoint.base_url}"
    (request,) = endpoint.requests
    assert request["authorization"] == "Bearer sekrit"
    assert request["body"]["messages"] == QUESTION
    assert request["body"]["temperature"] == 0.0 and request["body"]["max_tokens"] == 32
    assert "logprobs" not in request["body"]


def test_cache_hit_avoids_a_second_request(endpoint, tmp_path):
    cache = tmp_path / "cache.sqlite"
    with open_judge(openai_config(endpoint), cache) as judge:
        first = judge.judge(QUESTION)
        again = judge.judge(QUESTION)
        assert len(endpoint.requests) == 1
        assert again.cached and again.text == first.text
        assert (judge.n_requests, judge.n_cache_hits) == (1, 1)
        # Other sampling parameters are another judgment.
        judge.judge(QUESTION, max_tokens=8)
        assert len(endpoint.requests) == 2
    # A new process (here: a new judge on the same file) finds the judgments on disk.
    with open_judge(openai_config(endpoint), cache) as judge:
        assert judge.judge(QUESTION).cached
    assert len(endpoint.requests) == 2


def test_identical_requests_in_one_call_are_judged_once(endpoint, tmp_path):
    with open_judge(openai_config(endpoint), tmp_path / "cache.sqlite") as judge:
        judgments = judge.judge_many([QUESTION, OTHER_QUESTION, QUESTION])
    assert [j.text for j in judgments] == ["Rating: [[7]]"] * 3
    assert len(endpoint.requests) == 2


def test_top_logprobs_are_requested_and_kept(endpoint, tmp_path):
    top = [[("M", -0.1), ("m", -2.5)]]
    endpoint.reply = lambda body: (200, chat_response("M", top), 0.0)
    cache = tmp_path / "cache.sqlite"
    with open_judge(openai_config(endpoint), cache) as judge:
        judgment = judge.judge(QUESTION, max_tokens=1, top_logprobs=2)
    assert judgment.top_logprobs == top
    (request,) = endpoint.requests
    assert request["body"]["logprobs"] is True and request["body"]["top_logprobs"] == 2
    with open_judge(openai_config(endpoint), cache) as judge:
        assert judge.judge(QUESTION, max_tokens=1, top_logprobs=2).top_logprobs == top


@pytest.mark.parametrize(
    "bad_reply, error",
    [
        ((200, b"<html>this is not json</html>", 0.0), "invalid response"),
        ((200, b'{"object": "error"}', 0.0), "invalid response"),
        ((500, b'{"error": {"message": "boom"}}', 0.0), "HTTP 500"),
        ((429, b'{"error": {"message": "slow down"}}', 0.0), "HTTP 429"),
    ],
)
def test_broken_endpoint_is_retried_then_unavailable_and_earlier_judgments_stay_cached(
    endpoint, tmp_path, bad_reply, error
):
    cache = tmp_path / "cache.sqlite"
    config = openai_config(endpoint, max_retries=2)
    with open_judge(config, cache) as judge:
        judge.judge(QUESTION)
        endpoint.reply = lambda body: bad_reply
        with pytest.raises(JudgeUnavailable) as raised:
            judge.judge(OTHER_QUESTION)
    message = str(raised.value)
    assert endpoint.base_url in message and "3 attempts" in message and error in message
    assert str(cache) in message
    assert len(endpoint.requests) == 1 + 3
    with open_judge(config, cache) as judge:
        assert judge.judge(QUESTION).text == "Rating: [[7]]"
    assert len(endpoint.requests) == 1 + 3


def test_timeouts_are_retried_a_bounded_number_of_times(endpoint, tmp_path):
    endpoint.reply = lambda body: (200, chat_response("late"), 3.0)
    config = openai_config(endpoint, timeout_seconds=0.3, max_retries=1, backoff_seconds=0.01, concurrency=1)
    start = time.monotonic()
    with open_judge(config, tmp_path / "cache.sqlite") as judge:
        with pytest.raises(JudgeUnavailable, match=r"2 attempts.*no answer within 0.3 s \(judge.timeout_seconds\)"):
            judge.judge(QUESTION)
    assert time.monotonic() - start < 2.5
    assert len(endpoint.requests) == 2


def test_refused_request_is_not_retried(endpoint, tmp_path):
    endpoint.reply = lambda body: (401, b'{"error": {"message": "bad key"}}', 0.0)
    with open_judge(openai_config(endpoint), tmp_path / "cache.sqlite") as judge:
        with pytest.raises(JudgeError, match=f"HTTP 401.*\\${KEY_ENV}") as raised:
            judge.judge(QUESTION)
    assert not isinstance(raised.value, JudgeUnavailable)
    assert len(endpoint.requests) == 1


def test_unreachable_endpoint_is_unavailable(tmp_path):
    server = FakeEndpoint(lambda body: (200, chat_response("x"), 0.0))
    server.close()
    with open_judge(openai_config(server, max_retries=1), tmp_path / "cache.sqlite") as judge:
        with pytest.raises(JudgeUnavailable, match="2 attempts.*connection failed"):
            judge.judge(QUESTION)


def test_corrupt_cache_file_is_named(tmp_path, endpoint):
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"this is not a sqlite database, just some text" * 20)
    with pytest.raises(JudgeError, match="cache.sqlite: not a usable judgment cache"):
        open_judge(openai_config(endpoint), cache)


def test_local_hf_judge_decodes_greedily_with_logprobs(tiny_model_dir, tmp_path):
    config = JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend="hf", max_tokens=6, batch_size=2)
    conversations = [QUESTION, OTHER_QUESTION, [{"role": "user", "content": "A third, longer question here?"}]]
    cache = tmp_path / "cache.sqlite"
    with open_judge(config, cache) as judge:
        judgments = judge.judge_many(conversations, top_logprobs=3)
    assert judge.judge_id == "local-hf:tiny-random-llama"
    generator = load_generator(str(tiny_model_dir), backend="hf")
    expected = generator.generate(conversations, Sampling(temperature=0, max_tokens=6))
    generator.close()
    assert [j.text for j in judgments] == [c.text for (c,) in expected]
    for judgment, (completion,) in zip(judgments, expected):
        assert len(judgment.top_logprobs) == completion.completion_tokens
        for step in judgment.top_logprobs:
            logprobs = [lp for _, lp in step]
            assert len(step) == 3 and logprobs == sorted(logprobs, reverse=True) and logprobs[0] < 0
    with open_judge(config, cache) as judge:
        assert judge.judge_many(conversations, top_logprobs=3) == [
            Judgment(j.text, j.top_logprobs, cached=True) for j in judgments
        ]
        # Everything was cached: no model was loaded.
        assert judge._backend is None


@pytest.fixture(scope="module")
def vllm_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with head_dim 32: vLLM's CPU attention has no kernel for the tiny model's head_dim 16."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.head_dim = 32
    path = tmp_path_factory.mktemp("tiny-llama-head32")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.mark.vllm
def test_vllm_server_judge_and_openai_client_agree_with_hf(vllm_model_dir, tmp_path):
    conversations = [QUESTION, OTHER_QUESTION]
    # float32: the logprobs of both engines are compared to 1e-3, which bf16 kernels of either do not reach.
    local = JudgeConfig(kind="local", model=str(vllm_model_dir), max_tokens=5, concurrency=2, dtype="float32")
    with open_judge(local, tmp_path / "vllm.sqlite") as judge:
        served = judge.judge_many(conversations, top_logprobs=3)
        server = judge.backend.server
        assert judge.judge_id == f"local-vllm:{vllm_model_dir.name}"
        # The same server through the plain `openai` kind: the code path for any remote endpoint.
        remote = JudgeConfig(kind="openai", model=server.model_name, base_url=server.base_url, max_tokens=5)
        with open_judge(remote, tmp_path / "remote.sqlite") as client:
            through_client = client.judge_many(conversations, top_logprobs=3)
            assert client.n_requests == 2
        process = server.process
    assert server.process is None and process.poll() is not None and not server.log_path.exists()
    hf = JudgeConfig(kind="local", model=str(vllm_model_dir), local_backend="hf", max_tokens=5, dtype="float32")
    with open_judge(hf, tmp_path / "hf.sqlite") as judge:
        in_process = judge.judge_many(conversations, top_logprobs=3)
    assert [j.text for j in served] == [j.text for j in through_client] == [j.text for j in in_process]
    for judgment, reference in zip(served, in_process):
        assert judgment.top_logprobs and all(len(step) == 3 for step in judgment.top_logprobs)
        # Both report the model's raw distribution: the same tokens with the same logprobs.
        vllm_tokens, vllm_logprobs = zip(*judgment.top_logprobs[0])
        hf_tokens, hf_logprobs = zip(*reference.top_logprobs[0])
        assert vllm_tokens == hf_tokens
        assert vllm_logprobs == pytest.approx(hf_logprobs, abs=1e-3)


@pytest.mark.vllm
def test_vllm_server_that_cannot_start_is_reported_with_its_log(tmp_path):
    model_dir = tmp_path / "not-a-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "no-such-architecture"}')
    config = JudgeConfig(kind="local", model=str(model_dir), vllm_start_timeout_seconds=300)
    with open_judge(config, tmp_path / "cache.sqlite") as judge:
        with pytest.raises(JudgeError, match=r"(?s)exited with code \d+ before it was ready; end of \S+") as raised:
            judge.judge(QUESTION)
    log_path = Path(re.search(r"end of (\S+):", str(raised.value)).group(1))
    assert log_path.name.startswith("vllm-judge-not-a-model-") and "no-such-architecture" in log_path.read_text()
    log_path.unlink()
