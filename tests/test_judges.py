"""Judges: config and schema keys, the OpenAI-compatible client against fake endpoints, the cache through a Judge,
the in-process HF judge. (The vLLM judge: test_judge_vllm.py; the cache alone: test_judge_cache.py.)"""

import dataclasses
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from montessori.chat_format import template_text
from montessori.config import ConfigError, load_schema, validate_config
from montessori.generate import Sampling, load_generator
from montessori.judges import (
    CacheError,
    JudgeConfig,
    JudgeError,
    JudgeUnavailable,
    Judgment,
    OpenAIBackend,
    Params,
    judge_config,
    open_judge,
)
from montessori.judges.config import benchmark_judge
from tests.conftest import ROOT

KEY_ENV = "MONTESSORI_TEST_JUDGE_KEY"
QUESTION = [{"role": "user", "content": "Rate this answer."}]
# ChatML with SmolLM2's <|endoftext|> (id 0) closing each turn, where the tokenizer's EOS is <|im_end|> (id 2): a
# format whose end of turn a vLLM server would not stop at by itself.
ENDOFTEXT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|endoftext|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
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


def test_every_judge_setting_is_a_schema_key_with_a_default_and_a_description():
    schema = load_schema()
    keys = schema["properties"]["eval"]["properties"]["judge"]["properties"]
    # chat_template is the judge role's chat format, models.chat_template.judge.
    assert set(keys) == {f.name for f in dataclasses.fields(JudgeConfig)} - {"chat_template"}
    for key, prop in keys.items():
        assert "default" in prop and prop.get("description"), key
    # Each judged benchmark may override any of them, and only them.
    assert set(schema["definitions"]["judge_override"]["properties"]) == set(keys)
    assert judge_config(validate_config({})["eval"]["judge"]).temperature == 0


def test_a_benchmarks_judge_is_merged_over_eval_judge():
    remote = {"kind": "openai", "model": "gpt-4-1106-preview", "base_url": "https://api.openai.com/v1"}
    config = validate_config({"eval": {"judge": {"max_tokens": 64, "concurrency": 2}, "mt_bench": {"judge": remote}}})
    alpaca, mt_bench = (benchmark_judge(config["eval"], b) for b in ("alpaca_eval", "mt_bench"))
    assert alpaca == config["eval"]["judge"] and alpaca["kind"] == "local"
    assert mt_bench == {**config["eval"]["judge"], **remote} and mt_bench["max_tokens"] == 64
    assert config["eval"]["judge"]["kind"] == "local"  # the merge copies, eval.judge stays as it was
    with pytest.raises(ConfigError, match="'eval.mt_bench.judge merged over eval.judge': judge.base_url"):
        validate_config({"eval": {"mt_bench": {"judge": {"kind": "openai"}}}})
    with pytest.raises(ConfigError, match="'eval.alpaca_eval.judge.tempreature'"):
        validate_config({"eval": {"alpaca_eval": {"judge": {"tempreature": 1}}}})


def test_a_local_judges_identity_follows_its_chat_format(tiny_model_dir, tmp_path):
    custom = tmp_path / "endoftext.jinja"
    custom.write_text(ENDOFTEXT_TEMPLATE)
    identities = {}
    for spec in ("auto", "plain", str(custom)):
        config = JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend="hf", chat_template=spec)
        with open_judge(config, tmp_path / "judge_cache") as judge:
            assert judge.judge_id == "local-hf:tiny-random-llama" and judge._backend is None
            identities[spec] = judge.identity
            assert judge.settings()["chat_template"] == spec and judge.settings()["identity"] == judge.identity
    assert len(set(identities.values())) == 3
    plain_digest = hashlib.sha256(template_text("plain", "judge").encode()).hexdigest()[:16]
    assert identities["plain"].endswith(f"#chat-{plain_digest}")


def test_local_judge_needs_a_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="judge.model.*no config.json"):
        open_judge(JudgeConfig(kind="local", model=str(tmp_path / "missing")), tmp_path / "judge_cache")


def test_openai_judge_sends_greedy_requests_with_the_key_from_the_environment(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sekrit")
    with open_judge(openai_config(endpoint), tmp_path / "judge_cache") as judge:
        judgment = judge.judge(QUESTION)
    assert judgment.text == "Rating: [[7]]" and not judgment.cached and judgment.top_logprobs is None
    assert judge.judge_id == f"openai:fake-judge@{endpoint.base_url}"
    (request,) = endpoint.requests
    assert request["authorization"] == "Bearer sekrit"
    assert request["body"]["messages"] == QUESTION
    assert request["body"]["temperature"] == 0.0 and request["body"]["max_tokens"] == 32
    assert "logprobs" not in request["body"]


def test_the_retrying_client_works_without_a_judge(endpoint):
    """What a strong teacher writing training data through an API reuses: retries, no cache, extra fields."""
    calls = iter([(503, b'{"error": {"message": "busy"}}', 0.0), (200, chat_response("An answer."), 0.0)])
    endpoint.reply = lambda body: next(calls)
    client = OpenAIBackend(
        endpoint.base_url, "teacher", None, KEY_ENV, timeout_seconds=5, max_retries=1, backoff_seconds=0.01,
        concurrency=1, extra_body={"top_k": 40},
    )  # fmt: skip
    assert client.chat(QUESTION, Params(max_tokens=16, temperature=0.7, top_logprobs=0)).text == "An answer."
    client.close()
    assert [r["body"]["top_k"] for r in endpoint.requests] == [40, 40]
    assert endpoint.requests[-1]["body"]["temperature"] == 0.7


def test_cache_hit_avoids_a_second_request(endpoint, tmp_path):
    cache = tmp_path / "judge_cache"
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
    with open_judge(openai_config(endpoint), tmp_path / "judge_cache") as judge:
        judgments = judge.judge_many([QUESTION, OTHER_QUESTION, QUESTION])
    assert [j.text for j in judgments] == ["Rating: [[7]]"] * 3
    assert len(endpoint.requests) == 2


def test_top_logprobs_are_requested_and_kept(endpoint, tmp_path):
    top = [[("M", -0.1), ("m", -2.5)]]
    endpoint.reply = lambda body: (200, chat_response("M", top), 0.0)
    cache = tmp_path / "judge_cache"
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
    cache = tmp_path / "judge_cache"
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
    with open_judge(config, tmp_path / "judge_cache") as judge:
        with pytest.raises(JudgeUnavailable, match=r"2 attempts.*no answer within 0.3 s \(judge.timeout_seconds\)"):
            judge.judge(QUESTION)
    assert time.monotonic() - start < 2.5
    assert len(endpoint.requests) == 2


def test_refused_request_is_not_retried(endpoint, tmp_path):
    endpoint.reply = lambda body: (401, b'{"error": {"message": "bad key"}}', 0.0)
    with open_judge(openai_config(endpoint), tmp_path / "judge_cache") as judge:
        with pytest.raises(JudgeError, match=f"HTTP 401.*\\${KEY_ENV}") as raised:
            judge.judge(QUESTION)
    assert not isinstance(raised.value, JudgeUnavailable)
    assert len(endpoint.requests) == 1


def test_unreachable_endpoint_is_unavailable(tmp_path):
    server = FakeEndpoint(lambda body: (200, chat_response("x"), 0.0))
    server.close()
    with open_judge(openai_config(server, max_retries=1), tmp_path / "judge_cache") as judge:
        with pytest.raises(JudgeUnavailable, match="2 attempts.*connection failed"):
            judge.judge(QUESTION)


def test_an_old_sqlite_cache_in_place_of_the_directory_is_named(tmp_path, endpoint):
    cache = tmp_path / "judge_cache.sqlite"
    cache.write_bytes(b"SQLite format 3\0" + b"\0" * 100)
    with pytest.raises(CacheError, match="judge_cache.sqlite: is a file, but the cache is a directory"):
        open_judge(openai_config(endpoint), cache)


def test_a_crash_mid_judgment_loses_that_judgment_only(endpoint, tmp_path):
    cache = tmp_path / "judge_cache"
    questions = [[{"role": "user", "content": f"Rate answer {i}."}] for i in range(3)]
    with open_judge(openai_config(endpoint, concurrency=1), cache, writer="alpaca_eval-montessori") as judge:
        judge.judge_many(questions)
    (written,) = cache.glob("*.jsonl")
    assert written.name.startswith("alpaca_eval-montessori-") and len(written.read_text().splitlines()) == 3
    # The crash: the process died while the third judgment's line was half written.
    with open(written, "r+b") as f:
        f.truncate(written.stat().st_size - 40)
    with open_judge(openai_config(endpoint), cache) as judge:
        again = judge.judge_many(questions)
        assert [j.cached for j in again] == [True, True, False] and (judge.n_requests, judge.n_cache_hits) == (1, 2)
        assert any(f"{written}:3: incomplete last line" in p for p in judge.cache.problems)
    assert len(endpoint.requests) == 3 + 1
    # A rerun pays nothing.
    with open_judge(openai_config(endpoint), cache) as judge:
        assert all(j.cached for j in judge.judge_many(questions)) and judge.n_requests == 0
    assert len(endpoint.requests) == 3 + 1


# A job in its own process: `n` judgments of its own through the test's endpoint, into the shared cache directory.
JOB = """
import sys
from montessori.judges import JudgeConfig, open_judge

base_url, cache, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = JudgeConfig(kind="openai", model="fake-judge", base_url=base_url, max_tokens=32, concurrency=4)
with open_judge(config, cache, writer=name) as judge:
    judge.judge_many([[{"role": "user", "content": f"{name} asks {i}"}] for i in range(n)])
    assert judge.n_requests == n
"""


def test_jobs_judging_at_once_share_the_cache_directory(endpoint, tmp_path):
    endpoint.reply = lambda body: (200, chat_response("Rating: [[7]]"), 0.005)
    cache, n = tmp_path / "judge_cache", 60
    jobs = [
        subprocess.Popen([sys.executable, "-c", JOB, endpoint.base_url, str(cache), name, str(n)], cwd=ROOT)
        for name in ("mt_bench-a", "mt_bench-b")
    ]
    assert [job.wait(timeout=120) for job in jobs] == [0, 0]
    assert len(endpoint.requests) == 2 * n and len(list(cache.glob("*.jsonl"))) == 2
    everything = [
        [{"role": "user", "content": f"{name} asks {i}"}] for name in ("mt_bench-a", "mt_bench-b") for i in range(n)
    ]
    with open_judge(openai_config(endpoint), cache) as judge:
        assert all(j.cached for j in judge.judge_many(everything))
        assert judge.cache.problems == []
    assert len(endpoint.requests) == 2 * n


def test_local_hf_judge_decodes_greedily_with_logprobs(tiny_model_dir, tmp_path):
    config = JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend="hf", max_tokens=6, batch_size=2)
    conversations = [QUESTION, OTHER_QUESTION, [{"role": "user", "content": "A third, longer question here?"}]]
    cache = tmp_path / "judge_cache"
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
