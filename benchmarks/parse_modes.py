"""How many teacher outputs each parse mode (synthesis.parse) turns into an instruction, on outputs already made.

    python benchmarks/parse_modes.py results/default/iter*/candidates.parquet results/default/final/*/candidates.parquet

Every candidates.parquet keeps the teacher's raw output, so both modes can be applied to the same outputs without
asking the teacher again. Printed per file: outputs, instructions found by strict and by lenient parsing, and the
outputs only lenient accepts (a final <instruction> tag that is never closed).
"""

from __future__ import annotations

import sys

import pandas as pd

from montessori.prompts import parse_instruction


def parse_counts(raw_outputs: pd.Series) -> dict[str, int]:
    strict = raw_outputs.map(lambda raw: parse_instruction(raw, "strict")).notna()
    lenient = raw_outputs.map(lambda raw: parse_instruction(raw, "lenient")).notna()
    return {
        "outputs": len(raw_outputs),
        "strict": int(strict.sum()),
        "lenient": int(lenient.sum()),
        "lenient_only": int((lenient & ~strict).sum()),
    }


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit(__doc__)
    total = {"outputs": 0, "strict": 0, "lenient": 0, "lenient_only": 0}
    print(f"{'file':<60} {'outputs':>8} {'strict':>14} {'lenient':>14} {'lenient only':>12}")
    for path in paths:
        counts = parse_counts(pd.read_parquet(path, columns=["raw_output"])["raw_output"].fillna(""))
        total = {key: total[key] + counts[key] for key in total}
        _print_row(path, counts)
    _print_row("total", total)


def _print_row(name: str, counts: dict[str, int]) -> None:
    n = max(counts["outputs"], 1)
    print(
        f"{name:<60} {counts['outputs']:>8} {counts['strict']:>6} ({counts['strict'] / n:.1%}) "
        f"{counts['lenient']:>6} ({counts['lenient'] / n:.1%}) {counts['lenient_only']:>12}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
