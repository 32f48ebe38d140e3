"""The strong teacher (montessori.api_teacher): a real vLLM OpenAI-compatible server on 127.0.0.1, and endpoints
that fail or time out (real HTTP servers too, tests.test_judges.FakeEndpoint)."""

import json

import pytest

from montessori.api_teacher import APIGenerator
from montessori.generate import Sampling
from montessori.judges import JudgeError, JudgeUnavailable, VLLMServer
from tests.test_judge_vllm import vllm_model_dir  # noqa: F401 (a fixture)
from tests.test_judges import FakeEndpoint, chat_response

KEY_ENV = "MONTESSORI_TEST_TEACHER_KEY"
CONVERSATIONS = [[{"role": "user", "content": "Write an instruction."}], [{"role": "user", "content": "Another."}]]
SAMPLING = Sampling(temperature=1.0, top_p=0.9, presence_penalty=1.0, max_tokens=8, n=2, seed=3)


def teacher(base_url, cache, **options):
    settings = dict(model="teacher-model", api_key_env=KEY_ENV, max_retries=2, backoff_seconds=0.01, concurrency=2)
    return APIGenerator(base_url=base_url, cache_dir=cache, **{**settings, **options})


@pytest.fixture
def endpoint():
    server = FakeEndpoint(lambda body: (200, chat_response(f"sample seeded {body['seed']}"), 0.0))
    yield server
    server.close()


@pytest.mark.vllm
def test_a_real_vllm_server_writes_n_seeded_samples_and_a_rerun_pays_nothing(vllm_model_dir, tmp_path):  # noqa: F811
    server = VLLMServer(vllm_model_dir, dtype="float32")
    try:
        first = teacher(server.base_url, tmp_path / "cache", model=server.model_name)
        samples = first.generate(CONVERSATIONS, SAMPLING)
        first.close()
        again = teacher(server.base_url, tmp_path / "fresh_cache", model=server.model_name)
        resampled = again.generate(CONVERSATIONS, SAMPLING)
        again.close()
    finally:
        server.stop()
    assert [len(s) for s in samples] == [2, 2] and first.n_requests == 4
    for completion in (c for s in samples for c in s):
        assert completion.prompt_tokens > 0 and 1 <= completion.completion_tokens <= 8
        assert completion.finish_reason in ("stop", "length")
    # Seeded requests: the server gives the same samples again, and the two samples of a prompt differ.
    assert [[c.text for c in s] for s in resampled] == [[c.text for c in s] for s in samples]
    assert samples[0][0].text != samples[0][1].text
    # With the server gone, the cache alone answers a rerun.
    cached = teacher(server.base_url, tmp_path / "cache", model=server.model_name)
    assert cached.generate(CONVERSATIONS, SAMPLING) == samples and cached.n_requests == 0
    cached.close()


def test_requests_carry_the_sampling_and_the_key_from_the_environment_only(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-secret-123")
    generator = teacher(endpoint.base_url, tmp_path / "cache")
    samples = generator.generate(CONVERSATIONS, SAMPLING)
    generator.close()
    bodies = sorted((r["body"] for r in endpoint.requests), key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == [3, 4, 5, 6]  # sample j of conversation i: seed + i * n + j
    assert {(b["n"], b["temperature"], b["top_p"], b["presence_penalty"], b["max_tokens"]) for b in bodies} == {
        (1, 1.0, 0.9, 1.0, 8)
    }
    assert [[c.text for c in s] for s in samples] == [["sample seeded 3", "sample seeded 4"],
                                                      ["sample seeded 5", "sample seeded 6"]]  # fmt: skip
    assert {r["authorization"] for r in endpoint.requests} == {"Bearer sk-secret-123"}
    cached = "".join(p.read_text() for p in (tmp_path / "cache").iterdir())
    assert "sample seeded 3" in cached and "sk-secret" not in cached and KEY_ENV not in cached


def test_greedy_sampling_asks_once_per_conversation(endpoint, tmp_path):
    generator = teacher(endpoint.base_url, tmp_path / "cache")
    samples = generator.generate(CONVERSATIONS, Sampling(temperature=0.0, max_tokens=8, n=3, seed=0))
    assert len(endpoint.requests) == 2 and [len(s) for s in samples] == [3, 3]


@pytest.mark.parametrize(
    ("bad_reply", "error"),
    [((500, b'{"error": {"message": "boom"}}', 0.0), "HTTP 500"), ((200, b"<html>not json</html>", 0.0), "invalid")],
)
def test_an_endpoint_that_keeps_failing_is_retried_then_named_and_paid_samples_stay_cached(
    endpoint, tmp_path, bad_reply, error
):
    # One request at a time: none is still retrying in the background when the call fails.
    generator = teacher(endpoint.base_url, tmp_path / "cache", concurrency=1)
    generator.generate(CONVERSATIONS[:1], SAMPLING)
    endpoint.reply = lambda body: bad_reply
    with pytest.raises(JudgeUnavailable) as raised:
        generator.generate(CONVERSATIONS[1:], SAMPLING)
    message = str(raised.value)
    assert message.startswith("teacher ") and endpoint.base_url in message and error in message
    assert "3 attempts (models.strong_teacher.max_retries=2)" in message
    # The first conversation's samples were paid for: a rerun asks only for the rest.
    endpoint.reply = lambda body: (200, chat_response("recovered"), 0.0)
    before = len(endpoint.requests)
    rerun = teacher(endpoint.base_url, tmp_path / "cache")
    samples = rerun.generate(CONVERSATIONS, SAMPLING)
    assert len(endpoint.requests) - before == 2 and samples[1][0].text == "recovered"
    assert samples[0][0].text == "sample seeded 3"


def test_an_endpoint_that_does_not_answer_in_time_fails_after_bounded_retries(endpoint, tmp_path):
    endpoint.reply = lambda body: (200, chat_response("late"), 3.0)
    generator = teacher(endpoint.base_url, tmp_path / "cache", timeout_seconds=0.3, max_retries=1, concurrency=1)
    with pytest.raises(JudgeUnavailable, match=r"2 attempts.*no answer within 0.3 s \(models.strong_teacher"):
        generator.generate(CONVERSATIONS[:1], Sampling(temperature=0.0, max_tokens=8))
    assert len(endpoint.requests) == 2


def test_a_refused_request_names_the_key_variable_and_is_not_retried(endpoint, tmp_path):
    endpoint.reply = lambda body: (401, json.dumps({"error": {"message": "bad key"}}).encode(), 0.0)
    with pytest.raises(JudgeError, match=rf"teacher .* HTTP 401.*\${KEY_ENV}") as raised:
        teacher(endpoint.base_url, tmp_path / "cache").generate(CONVERSATIONS[:1], Sampling(temperature=0.0))
    assert not isinstance(raised.value, JudgeUnavailable) and len(endpoint.requests) == 1
