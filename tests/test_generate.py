import pytest
import torch

from montessori.generate import (
    Completion,
    PresencePenaltyProcessor,
    Sampling,
    load_generator,
)

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}],
    [
        {"role": "system", "content": "You write short instructions for a language model."},
        {"role": "user", "content": "Write one instruction about cooking rice, with an input."},
    ],
    [{"role": "user", "content": "What is the capital of France?"}],
]


def token_ids(generator, text: str) -> list[int]:
    return generator.tokenizer(text, add_special_tokens=False)["input_ids"]


# float32 throughout: these tests compare tokens exactly (batched vs alone, hf vs vLLM), and bf16 kernels of
# different shapes round differently. Number formats are tested in test_precision.py.
@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    generator = load_generator(str(tiny_model_dir), backend="hf", batch_size=2, dtype="float32")
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def vllm_engines(tiny_model_dir):
    """The module's vLLM generator, last in a list so that a test may close it and leave a new one: a process
    holds one vLLM engine at a time, and starting one costs seconds."""
    engines = [load_generator(str(tiny_model_dir), backend="vllm", seed=0, dtype="float32")]
    yield engines
    engines[-1].close()


@pytest.fixture
def vllm(vllm_engines):
    return vllm_engines[-1]


@pytest.mark.parametrize(
    "bad",
    [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_tokens": 0}, {"n": 0}],
)
def test_sampling_rejects_out_of_range_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Sampling(**bad)


def test_greedy_decodes_once():
    assert Sampling(temperature=0, n=4).draws == 1
    assert Sampling(temperature=0.7, n=4).draws == 4


def test_unknown_backend_is_named(tiny_model_dir):
    with pytest.raises(ValueError, match="'sglang'.*hf, vllm"):
        load_generator(str(tiny_model_dir), backend="sglang")


def test_presence_penalty_hits_each_generated_token_once_and_spares_the_prompt():
    # Prompt width 2; row 0 generated token 1 three times and token 3 once, row 1 generated token 5, which is
    # also row 0's prompt token.
    input_ids = torch.tensor([[5, 6, 1, 1, 3, 1], [0, 7, 5, 2, 2, 2]])
    scores = torch.zeros(2, 8)
    scores[0, 4] = float("-inf")
    out = PresencePenaltyProcessor(0.5, prompt_length=2)(input_ids, scores)
    expected = torch.zeros(2, 8)
    expected[0, [1, 3]] = -0.5
    expected[0, 4] = float("-inf")
    expected[1, [2, 5]] = -0.5
    assert torch.equal(out, expected)


def test_presence_penalty_leaves_scores_alone_before_the_first_generated_token():
    input_ids = torch.tensor([[5, 6, 1]])
    scores = torch.randn(1, 8)
    assert torch.equal(PresencePenaltyProcessor(1.0, prompt_length=3)(input_ids, scores), scores)


def test_conversations_are_validated(hf):
    assert hf.generate([], Sampling()) == []
    with pytest.raises(ValueError, match="conversation 1 has no messages"):
        hf.generate([CONVERSATIONS[0], []], Sampling())


def test_hf_returns_n_completions_per_conversation_in_input_order(hf):
    outputs = hf.generate(CONVERSATIONS, Sampling(n=3, max_tokens=5, seed=1))
    assert len(outputs) == len(CONVERSATIONS)
    for conversation, completions in zip(CONVERSATIONS, outputs):
        assert len(completions) == 3
        for completion in completions:
            assert isinstance(completion, Completion)
            assert completion.prompt_tokens == len(hf.encode(conversation))
            assert 1 <= completion.completion_tokens <= 5
            assert completion.text


def test_hf_batched_greedy_equals_one_at_a_time(hf):
    # The penalty keeps the random model from repeating one token, so the comparison covers varied outputs;
    # batch_size 2 over 3 prompts of different lengths exercises sorting, left padding and reordering.
    sampling = Sampling(temperature=0, presence_penalty=1.0, max_tokens=8)
    batched = hf.generate(CONVERSATIONS, sampling)
    alone = [hf.generate([conversation], sampling)[0] for conversation in CONVERSATIONS]
    assert batched == alone
    assert len({completions[0].text for completions in batched}) == len(CONVERSATIONS)


def test_hf_seed_decides_the_samples(hf):
    sampling = Sampling(n=2, max_tokens=6, seed=7)
    first = hf.generate(CONVERSATIONS[:2], sampling)
    assert hf.generate(CONVERSATIONS[:2], sampling) == first
    assert hf.generate(CONVERSATIONS[:2], Sampling(n=2, max_tokens=6, seed=8)) != first
    assert first[0][0] != first[0][1]


def test_hf_greedy_copies_one_answer_n_times(hf):
    (completions,) = hf.generate(CONVERSATIONS[:1], Sampling(temperature=0, n=3, max_tokens=4))
    assert len(completions) == 3 and len(set(completions)) == 1


def test_hf_honours_max_tokens(hf):
    # The random model practically never samples EOS, so it runs to the limit.
    for completions in hf.generate(CONVERSATIONS, Sampling(max_tokens=7)):
        assert completions[0].completion_tokens == 7


def test_hf_sampling_has_no_hidden_top_k(hf):
    # transformers samples from the top 50 tokens unless told otherwise; vLLM does not. The random model's
    # next-token distribution is nearly flat over 49k tokens, so without top-k most samples fall outside it.
    prompt = torch.tensor([hf.encode(CONVERSATIONS[0])])
    with torch.inference_mode():
        top50 = hf.model(prompt).logits[0, -1].topk(50).indices.tolist()
    top50_texts = {hf.tokenizer.decode([token]) for token in top50}
    (completions,) = hf.generate(CONVERSATIONS[:1], Sampling(n=16, max_tokens=1, seed=3))
    assert sum(c.text not in top50_texts for c in completions) >= 8


def test_hf_presence_penalty_reduces_repeated_tokens(hf):
    # Near-greedy sampling makes the random model repeat its favourite token; the penalty must break that.
    # Distinct tokens of the re-tokenised text per generated token (the tokenizer merges repeated newlines).
    def distinct_share(presence_penalty: float) -> float:
        sampling = Sampling(temperature=0.05, presence_penalty=presence_penalty, max_tokens=16, n=2, seed=5)
        completions = [c for row in hf.generate(CONVERSATIONS[:2], sampling) for c in row]
        distinct = sum(len(set(token_ids(hf, c.text))) for c in completions)
        return distinct / sum(c.completion_tokens for c in completions)

    assert distinct_share(2.0) > distinct_share(0.0) + 0.5


def test_hf_stops_at_eos_and_strips_special_tokens(smollm2_dir):
    generator = load_generator(str(smollm2_dir), backend="hf")
    try:
        (completions,) = generator.generate(CONVERSATIONS[2:], Sampling(temperature=0, max_tokens=24))
    finally:
        generator.close()
    (answer,) = completions
    assert "Paris" in answer.text
    assert "<|im_end|>" not in answer.text
    # The answer plus its EOS, well before the limit.
    assert answer.completion_tokens == len(generator.tokenizer(answer.text)["input_ids"]) + 1 < 24


@pytest.mark.vllm
def test_vllm_returns_n_seeded_completions(vllm):
    sampling = Sampling(n=2, max_tokens=6, seed=7, top_p=0.9, presence_penalty=1.0)
    first = vllm.generate(CONVERSATIONS, sampling, desc="test")
    assert [len(c) for c in first] == [2, 2, 2]
    for completions in first:
        for completion in completions:
            assert completion.prompt_tokens > 0
            assert completion.completion_tokens == 6
        assert completions[0] != completions[1]
    assert vllm.generate(CONVERSATIONS, sampling) == first
    assert vllm.generate(CONVERSATIONS, Sampling(n=2, max_tokens=6, seed=8, top_p=0.9)) != first
    assert vllm.generate([], sampling) == []
    with pytest.raises(ValueError, match="conversation 0"):
        vllm.generate([[]], sampling)


@pytest.mark.vllm
def test_greedy_hf_matches_vllm_token_for_token(vllm, tiny_model_dir):
    # With the penalty both backends must also agree on which tokens count as already generated.
    hf = load_generator(str(tiny_model_dir), backend="hf", batch_size=2, dtype="float32")
    try:
        for presence_penalty in (0.0, 1.0):
            sampling = Sampling(temperature=0, presence_penalty=presence_penalty, max_tokens=12, n=2)
            assert hf.generate(CONVERSATIONS, sampling) == vllm.generate(CONVERSATIONS, sampling)
    finally:
        hf.close()


@pytest.mark.vllm
def test_vllm_close_lets_another_engine_start(vllm_engines, tiny_model_dir):
    with pytest.raises(RuntimeError, match="already open"):
        load_generator(str(tiny_model_dir), backend="vllm", dtype="float32")
    sampling = Sampling(max_tokens=3, seed=2)
    first = vllm_engines[-1]
    before = first.generate(CONVERSATIONS[:1], sampling)
    first.close()
    vllm_engines.append(load_generator(str(tiny_model_dir), backend="vllm", dtype="float32"))
    assert vllm_engines[-1].generate(CONVERSATIONS[:1], sampling) == before


@pytest.mark.vllm
def test_vllm_renders_a_configured_format_like_hf(vllm_engines, tiny_model_dir, tiny_base_model_dir):
    """A base model in the plain format: vLLM gets the same template and end-of-turn stop as transformers."""
    vllm_engines[-1].close()
    options = {"dtype": "float32", "chat_template": "plain", "role": "student"}
    vllm_engines.append(load_generator(str(tiny_base_model_dir), backend="vllm", **options))
    hf = load_generator(str(tiny_base_model_dir), backend="hf", batch_size=2, **options)
    try:
        assert hf.chat_format == vllm_engines[-1].chat_format and hf.chat_format.spec == "plain"
        sampling = Sampling(temperature=0, max_tokens=12)
        assert hf.generate(CONVERSATIONS, sampling) == vllm_engines[-1].generate(CONVERSATIONS, sampling)
    finally:
        hf.close()
        vllm_engines[-1].close()
        vllm_engines.append(load_generator(str(tiny_model_dir), backend="vllm", seed=0, dtype="float32"))
