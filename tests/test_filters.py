from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer
from rouge_score.tokenize import tokenize as rouge_score_tokenize

from montessori.config import load_schema
from montessori.filters import OK, RougeFilter, instruction_verdict, rouge_tokens
from montessori.io import read_records
from montessori.pool import seed_text

SEEDS = Path(__file__).resolve().parent.parent / "data" / "seed_pool" / "alpaca_gpt4_en_demo_999.json"
FILTERS = load_schema()["properties"]["synthesis"]["properties"]["filters"]["properties"]
BANNED = FILTERS["banned_words"]["default"]
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def verdict(text):
    limits = {key: FILTERS[key]["default"] for key in ("min_chars", "max_chars")}
    assert limits == {"min_chars": 5, "max_chars": 400}
    return instruction_verdict(text, banned_words=BANNED, **limits)


def rouge(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


@pytest.fixture(scope="module")
def seed_texts() -> list[str]:
    return [seed_text(r["instruction"], r.get("input", "")) for r in read_records(SEEDS, required=("instruction",))]


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "no_instruction"),
        ("  \n ", "no_instruction"),
        ("Hello", "too_short"),
        ("  Hello  ", "too_short"),
        ("Hello!", OK),
        ("Say " + "a" * 396, OK),
        ("Say " + "a" * 397, "too_long"),
        ("Draw a cat.", "banned_word"),
        ("Explain the PLOT of Hamlet.", "banned_word"),
        ("Describe these pictures in detail.", "banned_word"),
        ("Tell me how to go to the station.", "banned_word"),
        ("Tell me how to go\n to the station.", "banned_word"),
        ("Summarise the map-reduce idea.", "banned_word"),
        ("Describe the drawing style of Monet.", OK),
        ("Write a profile of a chef.", OK),
        ("Explain why we go together.", OK),
        ("- List three fruits.", "bad_start"),
        ('"Rewrite this sentence."', "bad_start"),
        ("¿Qué hora es? Answer in English.", "bad_start"),
        ("“Quoted” text to rewrite.", "bad_start"),
        ("3 ways to save water?", OK),
    ],
)
def test_instruction_verdict(text, expected):
    assert verdict(text) == expected


def test_banned_words_come_from_the_argument():
    assert instruction_verdict("Draw a cat.", 5, 400, banned_words=[]) == OK
    assert instruction_verdict("Bake a cake.", 5, 400, banned_words=["cake"]) == "banned_word"


def test_an_empty_banned_word_is_a_config_error():
    with pytest.raises(ValueError, match="synthesis.filters.banned_words"):
        instruction_verdict("Bake a cake.", 5, 400, banned_words=["cake", " "])


def test_rouge_tokens_match_rouge_score():
    for text in ["Café au lait, s'il vous plaît!", "Ünïcode — and   SPACES\tand_underscores", "x2 = y**3", "!!!"]:
        assert rouge_tokens(text) == rouge_score_tokenize(text, None)


def test_rouge_l_equals_rouge_score_on_random_seed_pairs(seed_texts):
    rng = np.random.default_rng(0)
    pairs = [tuple(rng.choice(seed_texts, size=2, replace=False)) for _ in range(200)]
    # Random pairs score low; partial copies cover the high range the threshold cares about.
    for a, _ in pairs[:60]:
        words = a.split()
        pairs.append((a, " ".join(words[: max(1, len(words) * 3 // 4)] + ["extra", "words"])))
    for a, b in pairs:
        rouge_filter = RougeFilter(max_rouge_l=1.0)
        rouge_filter.accept(a)
        assert rouge_filter.accept(b)[1] == pytest.approx(rouge(a, b), abs=1e-9, rel=0)


def test_decisions_equal_a_brute_force_rouge_score_filter(seed_texts):
    rng = np.random.default_rng(1)
    texts = list(rng.choice(seed_texts, size=60, replace=False))
    texts += [t.upper() + "?" for t in texts[:10]] + [" ".join(t.split()[1:]) for t in texts[10:20]]
    texts = [texts[i] for i in rng.permutation(len(texts))]
    rouge_filter, accepted, n_rejected = RougeFilter(max_rouge_l=0.7), [], 0
    for text in texts:
        expected = max((rouge(a, text) for a in accepted), default=0.0)
        novel, score, _, _ = rouge_filter.accept(text)
        assert score == pytest.approx(expected, abs=1e-9, rel=0)
        assert novel == (expected <= 0.7)
        if novel:
            accepted.append(text)
        n_rejected += not novel
    assert n_rejected >= 10


def test_near_duplicate_is_rejected_and_distinct_text_accepted():
    rouge_filter = RougeFilter(max_rouge_l=0.7)
    assert rouge_filter.accept("Give three tips for staying healthy.") == (True, 0.0, None, None)
    novel, score, match, source = rouge_filter.accept("Give me three tips for staying healthy!")
    assert not novel and score == pytest.approx(2 * 6 / (6 + 7))
    assert (match, source) == ("Give three tips for staying healthy.", "accepted")
    novel, score, _, _ = rouge_filter.accept("Write a haiku about autumn leaves.")
    assert novel and score < 0.7
    # A rejected text does not join the set: were it accepted, its own near-duplicate would be rejected.
    assert rouge_filter.accept("Give three tips for staying healthy and happy at work.")[0] is False
    assert rouge_filter.accept("Tips for staying healthy and happy at work.")[0] is True


def test_threshold_ties_are_decided_by_rouge_score_rounding():
    # Both accepted texts have Indel similarity exactly 0.7 to the query; rouge_score's F is 0.7 for the
    # first (kept) and 0.7000000000000001 for the second (dropped), so the query must be rejected.
    query = [f"q{i}" for i in range(21)]
    first = query[:14] + [f"a{i}" for i in range(5)]
    second = query + [f"b{i}" for i in range(18)]
    rouge_filter = RougeFilter(max_rouge_l=0.7)
    assert rouge_filter.accept(" ".join(first))[0] and rouge_filter.accept(" ".join(second))[0]
    expected = max(rouge(" ".join(first), " ".join(query)), rouge(" ".join(second), " ".join(query)))
    assert expected > 0.7
    assert rouge_filter.accept(" ".join(query))[:2] == (False, expected)


def test_texts_without_tokens_are_always_novel():
    rouge_filter = RougeFilter(max_rouge_l=0.7)
    assert rouge_filter.accept("¿¡!!")[:2] == (True, 0.0)
    assert rouge_filter.accept("…?")[:2] == (True, 0.0)
    assert rouge_filter.accept("Name a color.")[:2] == (True, 0.0)


def test_a_copy_of_an_in_context_example_is_not_novel():
    """The reference implementation also compares with the examples the teacher was shown."""
    rouge_filter = RougeFilter(max_rouge_l=0.7)
    examples = ["Write a haiku about autumn leaves.", "Name three rivers in Europe."]
    novel, score, match, source = rouge_filter.accept("Name three rivers in Europe!", examples)
    assert (novel, score, match, source) == (False, 1.0, "Name three rivers in Europe.", "in_context")
    # Not accepted, so it does not block a later text; a distinct text passes against both sets.
    novel, score, match, source = rouge_filter.accept("Explain how tides form.", examples)
    assert novel and score < 0.7 and source == "in_context"
    # The accepted set and the examples are both searched; the higher score decides.
    novel, score, match, source = rouge_filter.accept("Explain how the tides form.", ["Name a colour."])
    assert not novel and (match, source) == ("Explain how tides form.", "accepted")
    expected = max(rouge("Write a haiku about autumn leaves.", "A haiku about autumn leaves, please."), 0.0)
    assert rouge_filter.accept("A haiku about autumn leaves, please.", examples)[1] == pytest.approx(expected)
