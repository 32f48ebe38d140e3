"""Which AlpacaEval items a run scores: the held-out subset, all 805, and a seeded sample of either.

The paper's reference set of local influence is 256 AlpacaEval instructions with GPT-4-1106 answers: the teacher
is optimised on those prompts, so scoring them measures what it was trained on. `heldout` leaves out every item
whose instruction (whitespace normalised) is in the run's reference set; `all` is the paper's full benchmark.
`eval.limit.alpaca_eval` draws a deterministic sample (the config seed) from a subset instead of its first N
items, which are exactly the reference set's first items.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SUBSETS = ("heldout", "all")


def item_id(index: int) -> str:
    """An item's id: its position among the 805 AlpacaEval instructions."""
    return f"alpaca_eval-{index:03d}"


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def subset_names(subset: str | Sequence[str]) -> list[str]:
    """eval.alpaca_eval.subset as a list (a string is one subset); the first is the one table1 shows."""
    names = [subset] if isinstance(subset, str) else list(subset)
    unknown = [name for name in names if name not in SUBSETS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"config key 'eval.alpaca_eval.subset' is {subset!r}: expected one of {', '.join(SUBSETS)}, "
            "or a list of distinct ones"
        )
    return names


def subset_indices(instructions: Sequence[str], reference_instructions: Iterable[str], subset: str) -> list[int]:
    """Positions of the subset's items among `instructions` (the 805 AlpacaEval instructions)."""
    if subset == "all":
        return list(range(len(instructions)))
    reference = {normalize_whitespace(text) for text in reference_instructions}
    return [i for i, text in enumerate(instructions) if normalize_whitespace(text) not in reference]


def sample(indices: list[int], limit: int | None, seed: int, subset: str) -> list[int]:
    """`limit` of `indices`, drawn without replacement by `seed`, in benchmark order (all of them if None)."""
    if limit is None or limit >= len(indices):
        return indices
    rng = np.random.default_rng([seed, zlib.crc32(f"alpaca_eval:{subset}".encode())])
    return sorted(int(i) for i in rng.choice(indices, size=limit, replace=False))


def select(
    instructions: Sequence[str],
    reference_instructions: Iterable[str],
    subset: str | Sequence[str],
    limit: int | None,
    seed: int,
) -> dict[str, list[int]]:
    """{subset: the positions it scores}, for every subset the config names, in its order."""
    reference = list(reference_instructions)
    return {
        name: sample(subset_indices(instructions, reference, name), limit, seed, name) for name in subset_names(subset)
    }


def union(selected: dict[str, list[int]]) -> list[int]:
    """Every position some subset scores, in benchmark order: the items the student answers."""
    return sorted({i for indices in selected.values() for i in indices})


def items(records: Sequence[dict[str, Any]], indices: Iterable[int]) -> list[dict[str, Any]]:
    """The AlpacaEval records at `indices`, each with its item_id."""
    return [{**records[i], "item_id": item_id(i)} for i in indices]
