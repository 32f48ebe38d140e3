import math

import pandas as pd
import pytest

from montessori.pairs import PAIR_COLUMNS, NoPairsError, make_pairs, pair_id, require_pairs


def scored(rows: list[tuple[str, str, float]], iteration: int = 1) -> pd.DataFrame:
    """(candidate_id, prompt_id, influence) rows; prompt and raw output are derived from the ids."""
    return pd.DataFrame(
        {
            "candidate_id": [c for c, _, _ in rows],
            "prompt_id": [p for _, p, _ in rows],
            "prompt": [f"write an instruction ({p})" for _, p, _ in rows],
            "raw_output": [f"rationale <instruction>{c}</instruction>" for c, _, _ in rows],
            "influence": [i for _, _, i in rows],
            "iteration": iteration,
        }
    )


def test_two_positive_two_negative_make_four_pairs():
    frame = scored([("a", "p1", 0.3), ("b", "p1", -0.1), ("c", "p1", 0.2), ("d", "p1", -0.4)])
    pairs = make_pairs(frame)
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert list(zip(pairs["chosen_candidate_id"], pairs["rejected_candidate_id"])) == [
        ("a", "b"),
        ("a", "d"),
        ("c", "b"),
        ("c", "d"),
    ]
    first = pairs.iloc[0]
    assert first["chosen"] == "rationale <instruction>a</instruction>"
    assert first["rejected"] == "rationale <instruction>b</instruction>"
    assert first["prompt"] == "write an instruction (p1)"
    assert (first["chosen_influence"], first["rejected_influence"], first["iteration"]) == (0.3, -0.1, 1)
    assert first["pair_id"] == pair_id("a", "b")
    assert pairs["pair_id"].is_unique


def test_pairs_stay_within_their_prompt():
    frame = scored([("a", "p1", 0.3), ("b", "p2", -0.1), ("c", "p2", 0.5), ("d", "p1", -0.2)])
    pairs = make_pairs(frame)
    assert sorted(zip(pairs["prompt_id"], pairs["chosen_candidate_id"], pairs["rejected_candidate_id"])) == [
        ("p1", "a", "d"),
        ("p2", "c", "b"),
    ]


def test_order_and_ids_do_not_depend_on_input_order():
    frame = scored([("a", "p1", 0.3), ("b", "p1", -0.1), ("c", "p2", 0.2), ("d", "p2", -0.4), ("e", "p2", -0.5)])
    forward = make_pairs(frame)
    backward = make_pairs(frame.iloc[::-1].reset_index(drop=True))
    pd.testing.assert_frame_equal(forward, backward)


def test_pair_id_depends_on_which_side_is_chosen():
    assert pair_id("a", "b") == pair_id("a", "b")
    assert pair_id("a", "b") != pair_id("b", "a")


def test_all_positive_gives_no_pairs_and_require_pairs_explains():
    frame = scored([("a", "p1", 0.3), ("b", "p1", 0.1), ("c", "p2", 0.2)])
    pairs = make_pairs(frame)
    assert pairs.empty
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    with pytest.raises(NoPairsError) as error:
        require_pairs(pairs, frame, "results/x/iteration1/pairs.parquet")
    message = str(error.value)
    assert message.startswith("results/x/iteration1/pairs.parquet:")
    assert "3 positive, 0 negative, 0 zero, 0 NaN" in message
    for hint in ("influence.n_prompts", "synthesis.candidates_per_prompt", "null_step"):
        assert hint in message


def test_zero_influence_is_neither_side():
    frame = scored([("a", "p1", 0.0), ("b", "p1", -0.1), ("c", "p2", 0.0), ("d", "p2", 0.2)])
    pairs = make_pairs(frame)
    assert pairs.empty
    with pytest.raises(NoPairsError, match="1 positive, 1 negative, 2 zero, 0 NaN"):
        require_pairs(pairs, frame, "here")


def test_a_prompt_with_a_single_candidate_is_dropped():
    frame = scored([("a", "p1", 0.4), ("b", "p2", 0.3), ("c", "p2", -0.3)])
    pairs = make_pairs(frame)
    assert list(pairs["prompt_id"]) == ["p2"]
    require_pairs(pairs, frame, "here")


def test_nan_influence_is_neither_side_and_is_reported(caplog):
    frame = scored([("a", "p1", math.nan), ("b", "p1", -0.1), ("c", "p1", 0.2)])
    with caplog.at_level("WARNING", logger="montessori.pairs"):
        pairs = make_pairs(frame)
    assert list(zip(pairs["chosen_candidate_id"], pairs["rejected_candidate_id"])) == [("c", "b")]
    assert "1 of 3 candidates have a NaN influence" in caplog.text
    only_nan = scored([("a", "p1", math.nan), ("b", "p1", 0.1)])
    with pytest.raises(NoPairsError, match="1 positive, 0 negative, 0 zero, 1 NaN"):
        require_pairs(make_pairs(only_nan), only_nan, "here")


def test_missing_column_is_named():
    frame = scored([("a", "p1", 0.4)]).drop(columns=["raw_output"])
    with pytest.raises(ValueError, match="raw_output"):
        make_pairs(frame)


def test_duplicate_candidate_is_rejected():
    frame = scored([("a", "p1", 0.4), ("a", "p1", -0.4)])
    with pytest.raises(ValueError, match="candidate_id 'a' occurs more than once"):
        make_pairs(frame)


def test_prompt_id_spanning_two_iterations_is_rejected():
    frame = pd.concat([scored([("a", "p1", 0.4)], iteration=1), scored([("b", "p1", -0.4)], iteration=2)])
    with pytest.raises(ValueError, match="prompt_id 'p1'"):
        make_pairs(frame)
