"""First-token answer distributions (montessori.judges.first_token): exact from a local model, read from the
alternatives a remote judge reports."""

import math

import pytest
import torch

from montessori.generate import HFGenerator
from montessori.judges import JudgeConfig, Judgment
from montessori.judges.first_token import LocalScorer, first_token_probabilities, reported_probabilities
from tests.test_judges import FakeEndpoint, chat_response

QUESTIONS = [
    [{"role": "user", "content": "Rate the answer from 0 to 5."}],
    [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "Is it right? One word."}],
]


def test_a_local_scorer_reads_the_next_token_distribution_of_each_conversation_alone(tiny_model_dir):
    """Batched with left padding, each conversation scores as it would alone: the answers' first tokens under a
    softmax of the model's next-token logits."""
    scorer = LocalScorer(tiny_model_dir, "auto", batch_size=2, dtype="float32")
    batched, texts = scorer.probabilities(QUESTIONS, ("0", "1", "2", "3", "4", "5"))
    generator = HFGenerator(str(tiny_model_dir), batch_size=1, dtype="float32", role="judge")
    for conversation, probabilities, text in zip(QUESTIONS, batched, texts):
        ids = torch.tensor([generator.encode(conversation)])
        with torch.no_grad():
            alone = torch.softmax(generator.model(ids).logits[0, -1].float(), dim=-1)
        # Each digit is one token in SmolLM2's tokenizer; " 3" is a space, then "3", and the space counts for none.
        digits = {d: float(alone[generator.tokenizer(d, add_special_tokens=False)["input_ids"][0]]) for d in "012345"}
        total = sum(digits.values())
        assert probabilities == pytest.approx({d: p / total for d, p in digits.items()}, rel=1e-4)
        assert text == generator.tokenizer.decode([int(alone.argmax())])
    assert scorer.identity.startswith(f"local-hf:{tiny_model_dir.name}#")
    scorer.close()


def test_words_count_in_every_spelling_and_answers_must_start_differently(tiny_model_dir):
    scorer = LocalScorer(tiny_model_dir, "auto", batch_size=4, dtype="float32")
    (probabilities,), _ = scorer.probabilities(QUESTIONS[:1], ("correct", "incorrect"))
    assert set(probabilities) == {"correct", "incorrect"} and sum(probabilities.values()) == pytest.approx(1)
    assert len(scorer._first_token_ids("correct")) >= 2  # correct, Correct, " correct", " Correct"
    with pytest.raises(ValueError, match="differ in their first letter"):
        scorer.probabilities(QUESTIONS[:1], ("correct", "certainly"))
    scorer.close()


def test_a_remote_judges_reported_alternatives_give_the_distribution(tmp_path):
    judgment = Judgment("4", [[("4", math.log(0.5)), (" 3", math.log(0.2)), ("The", math.log(0.2)),
                               ("5", math.log(0.1))]])  # fmt: skip
    assert reported_probabilities(judgment, tuple("012345")) == pytest.approx(
        {"0": 0, "1": 0, "2": 0, "3": 0.25, "4": 0.625, "5": 0.125}
    )
    words = Judgment("Inc", [[("Inc", math.log(0.3)), ("correct", math.log(0.6)), ("I", math.log(0.1))]])
    # "I" and "Inc" are prefixes of "incorrect" only.
    assert reported_probabilities(words, ("correct", "incorrect")) == pytest.approx({"correct": 0.6, "incorrect": 0.4})
    assert reported_probabilities(Judgment("x", [[("x", 0.0)]]), ("correct", "incorrect")) == {}
    # Through a remote judge: one token, top_logprobs, cached.
    top = [[("2", math.log(0.7)), ("1", math.log(0.3))]]
    server = FakeEndpoint(lambda body: (200, chat_response("2", top), 0.0))
    try:
        config = JudgeConfig(kind="openai", model="judge", base_url=server.base_url)
        probabilities, texts, identity = first_token_probabilities(config, QUESTIONS[:1], ("1", "2"), tmp_path, "t")
        again = first_token_probabilities(config, QUESTIONS[:1], ("1", "2"), tmp_path, "t")
    finally:
        server.close()
    assert probabilities == [pytest.approx({"1": 0.3, "2": 0.7})] and texts == ["2"] and again[0] == probabilities
    assert len(server.requests) == 1 and server.requests[0]["body"]["max_tokens"] == 1
    assert server.requests[0]["body"]["top_logprobs"] == 20 and identity.startswith("openai:judge@")
