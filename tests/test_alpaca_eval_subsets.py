"""Which AlpacaEval items are scored: held out from the influence reference set, all, a seeded sample."""

import pytest

from montessori.benchmarks import alpaca_eval_subsets as subsets
from montessori.benchmarks.alpaca_eval import load_instructions, selected_items

INSTRUCTIONS = [r["instruction"] for r in load_instructions()]


def test_heldout_leaves_out_the_reference_instructions_after_whitespace_normalisation():
    reference = [INSTRUCTIONS[0], "  " + INSTRUCTIONS[3].replace(" ", "\n  ", 2) + " ", "not an AlpacaEval item"]
    heldout = subsets.subset_indices(INSTRUCTIONS, reference, "heldout")
    assert 0 not in heldout and 3 not in heldout and len(heldout) == len(INSTRUCTIONS) - 2
    assert subsets.subset_indices(INSTRUCTIONS, reference, "all") == list(range(805))


def test_a_limit_draws_a_seeded_sample_not_the_first_items():
    reference = INSTRUCTIONS[:256]  # the paper's reference set is AlpacaEval's first 256 instructions
    selected = subsets.select(INSTRUCTIONS, reference, "heldout", limit=6, seed=0)
    (chosen,) = selected.values()
    assert len(chosen) == 6 and chosen == sorted(chosen) and min(chosen) >= 256
    assert subsets.select(INSTRUCTIONS, reference, "heldout", limit=6, seed=0) == selected
    assert subsets.select(INSTRUCTIONS, reference, "heldout", limit=6, seed=1) != selected
    everything = subsets.select(INSTRUCTIONS, reference, "all", limit=None, seed=0)
    assert everything == {"all": list(range(805))}


def test_several_subsets_are_answered_once_per_item():
    reference = INSTRUCTIONS[:4]
    selected, items = selected_items(reference, ["heldout", "all"], limit=5, seed=0)
    assert list(selected) == ["heldout", "all"]
    union = sorted(set(selected["heldout"]) | set(selected["all"]))
    assert [item["item_id"] for item in items] == [subsets.item_id(i) for i in union]
    assert items[0]["instruction"] == INSTRUCTIONS[union[0]]


@pytest.mark.parametrize("bad", ["train", [], ["heldout", "heldout"], ["all", "nope"]])
def test_bad_subsets_name_the_key(bad):
    with pytest.raises(ValueError, match="'eval.alpaca_eval.subset'"):
        subsets.subset_names(bad)


def test_a_bad_limit_names_the_key():
    with pytest.raises(ValueError, match="'eval.limit.alpaca_eval' must be >= 1"):
        selected_items([], "heldout", limit=0, seed=0)
