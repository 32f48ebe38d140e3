import hashlib
import re

import pytest

from montessori.benchmarks.mt_bench import (
    JUDGE_PROMPT_FILE,
    generate_answers,
    judge_messages,
    load_judge_prompts,
    load_questions,
    load_reference_answers,
    parse_rating,
    run_mt_bench,
)
from montessori.generate import Completion, Sampling, load_generator
from montessori.judges import JudgeConfig, open_judge
from tests.test_judges import FakeEndpoint, chat_response

WRITING, MATH, EXTRACTION = 81, 111, 131


class RecordingGenerator:
    """A Generator that answers "answer N" (with whitespace FastChat strips) and records what it was asked."""

    model_path = "recording-model"

    def __init__(self):
        self.calls: list[tuple[list, Sampling]] = []

    def generate(self, conversations, sampling, desc="generate"):
        self.calls.append((conversations, sampling))
        start = sum(len(c) for c, _ in self.calls[:-1])
        return [[Completion(f"  answer {start + k}\n", 1, 1)] for k in range(len(conversations))]

    def close(self):
        pass


@pytest.mark.parametrize(
    "judgment, rating",
    [
        ("The answer is fine. Rating: [[8]]", 8.0),
        ("[[8.5]]", 8.5),
        ("Rating: [[10]] and later [[2]]", 10.0),
        ("Rating: [9]", 9.0),
        # FastChat's regexes allow no spaces inside the brackets; FastChat scores this -1, so do we (invalid).
        ("Rating: [[ 7 ]]", None),
        ("I would rate it 7 out of 10.", None),
        ("Rating: [[seven]]", None),
        ("", None),
    ],
)
def test_parse_rating_follows_fastchat(judgment, rating):
    assert parse_rating(judgment) == rating


def test_load_questions():
    assert len(load_questions()) == 80
    assert [q["question_id"] for q in load_questions(limit=2)] == [81, 82]
    assert [q["category"] for q in load_questions(question_ids=[MATH, WRITING])] == ["math", "writing"]
    with pytest.raises(ValueError, match=r"no question\(s\) \[7\]"):
        load_questions(question_ids=[7])


def test_judge_prompts_take_references_for_math_and_the_conversation_for_turn_two():
    prompts, references = load_judge_prompts(), load_reference_answers()
    math_question, writing_question = load_questions(question_ids=[MATH, WRITING])
    answers = ["FIRST ANSWER", "SECOND ANSWER"]

    name, messages = judge_messages(writing_question, answers, 1, prompts, references)
    assert name == "single-v1"
    assert messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    user = messages[1]["content"]
    assert writing_question["turns"][0] in user and "FIRST ANSWER" in user and "SECOND ANSWER" not in user
    assert user.endswith("[The End of Assistant's Answer]")

    name, messages = judge_messages(math_question, answers, 1, prompts, references)
    assert name == "single-math-v1"
    assert references[MATH][0] in messages[1]["content"] and references[MATH][1] not in messages[1]["content"]

    name, messages = judge_messages(math_question, answers, 2, prompts, references)
    assert name == "single-math-v1-multi-turn"
    assert messages[0]["content"] == prompts[name]["system_prompt"]
    user = messages[1]["content"]
    for text in (*math_question["turns"], *answers, *references[MATH]):
        assert text in user
    assert not re.search(r"\{(question|answer|ref_answer)(_\d)?\}", user)


def test_answers_use_fastchat_temperatures_and_keep_turn_one_in_context():
    generator = RecordingGenerator()
    questions = load_questions(question_ids=[WRITING, MATH, EXTRACTION])
    answers = generate_answers(generator, questions, max_tokens=64, seed=3)
    assert all(len(a) == 2 and a[0] != a[1] and a[0] == a[0].strip() for a in answers)
    temperatures = sorted({s.temperature for _, s in generator.calls})
    assert temperatures == [0.0, 0.7]
    assert all(s.max_tokens == 64 and s.seed == 3 and s.top_p == 1.0 for _, s in generator.calls)
    turn_two = [c for conversations, _ in generator.calls for c in conversations if len(c) == 3]
    assert len(turn_two) == 3
    for question, answer in zip(questions, answers):
        (conversation,) = [c for c in turn_two if c[0]["content"] == question["turns"][0]]
        assert conversation == [
            {"role": "user", "content": question["turns"][0]},
            {"role": "assistant", "content": answer[0]},
            {"role": "user", "content": question["turns"][1]},
        ]
        asked = [s for conversations, s in generator.calls for c in conversations if c == conversation]
        assert asked[0].temperature == (0.7 if question["category"] == "writing" else 0.0)


def fake_grader(body):
    """Turn 2 (multi-turn prompts) gets 6, turn 1 gets 8.5, except the math turn 1, which gets no rating."""
    system, user = (m["content"] for m in body["messages"])
    if system.startswith("Please act"):
        return 200, chat_response("Fine follow-up. Rating: [[6]]"), 0.0
    if "[The Start of Reference Answer]" in user:
        return 200, chat_response("I cannot rate this."), 0.0
    return 200, chat_response("Good. Rating: [[8.5]]"), 0.0


def test_scores_are_means_over_valid_ratings(tmp_path):
    endpoint = FakeEndpoint(fake_grader)
    config = JudgeConfig(kind="openai", model="fake-judge", base_url=endpoint.base_url, max_retries=0, max_tokens=99)
    try:
        with open_judge(config, tmp_path / "judge_cache") as judge:
            result = run_mt_bench(RecordingGenerator(), judge, max_tokens=32, question_ids=[WRITING, MATH, EXTRACTION])
    finally:
        endpoint.close()
    assert (result["benchmark"], result["model"], result["judge"]) == ("mt_bench", "recording-model", judge.judge_id)
    assert result["judge_prompts"]["file"] == "data/mt_bench/judge_prompts.jsonl"
    assert result["judge_prompts"]["sha256"] == hashlib.sha256(JUDGE_PROMPT_FILE.read_bytes()).hexdigest()
    settings = result["judge_settings"]
    assert (settings["max_tokens"], settings["temperature"], settings["identity"]) == (99, 0.0, judge.identity)
    assert (result["n_items"], result["n_judgments"], result["n_invalid"]) == (3, 6, 1)
    assert result["score_turn1"] == 8.5 and result["score_turn2"] == 6.0
    assert result["score"] == pytest.approx((8.5 + 8.5 + 6 + 6 + 6) / 5)
    assert result["score_by_category"] == {"extraction": 7.25, "math": 6.0, "writing": 7.25}
    assert all(r["body"]["max_tokens"] == 99 and r["body"]["temperature"] == 0.0 for r in endpoint.requests)
    invalid = [item for item in result["items"] if item["rating"] is None]
    assert [(i["question_id"], i["turn"], i["judge_prompt"]) for i in invalid] == [(MATH, 1, "single-math-v1")]
    assert invalid[0]["judgment"] == "I cannot rate this."


def test_end_to_end_with_the_tiny_model(tiny_model_dir, tmp_path):
    """The tiny model answers three questions and grades them: garbage ratings, but every judgment counted."""
    generator = load_generator(str(tiny_model_dir), backend="hf")
    config = JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend="hf", max_tokens=12, batch_size=6)
    with open_judge(config, tmp_path / "judge_cache") as judge:
        result = run_mt_bench(generator, judge, max_tokens=8, question_ids=[WRITING, MATH, 121])
    generator.close()
    assert result["judge"] == "local-hf:tiny-random-llama" and result["model"] == str(tiny_model_dir)
    assert (result["n_items"], result["n_judgments"]) == (3, 6)
    ratings = [item["rating"] for item in result["items"]]
    assert result["n_invalid"] == sum(r is None for r in ratings)
    valid = [r for r in ratings if r is not None]
    assert result["score"] == (sum(valid) / len(valid) if valid else None)
    assert [i["judge_prompt"] for i in result["items"]] == [
        "single-v1", "single-v1-multi-turn",
        "single-math-v1", "single-math-v1-multi-turn",
        "single-math-v1", "single-math-v1-multi-turn",
    ]  # fmt: skip
    assert all(isinstance(item["answer"], str) and isinstance(item["judgment"], str) for item in result["items"])
