"""Time RougeFilter on Alpaca instructions, and a plain rouge_score filter on a prefix of them for comparison.

    python benchmarks/rouge_filter.py [--n 10000] [--n-rouge-score 500]

Both filters see the same texts in the same order, each with IN_CONTEXT other instructions as the examples of
its prompt (the reference implementation's filter compares with those too); the script also checks that they
make the same decisions on the prefix. The first timing leaves the examples out, for comparison.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer

from montessori.filters import RougeFilter
from montessori.io import read_records
from montessori.pool import seed_text

SEEDS = Path(__file__).resolve().parent.parent / "data" / "seed_pool" / "alpaca_cleaned_51924.jsonl.gz"
MAX_ROUGE_L = 0.7
IN_CONTEXT = 8


def rouge_score_filter(texts: list[str], contexts: list[list[str]]) -> list[bool]:
    """The reference: score each text against every accepted one and its examples with rouge_score."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    accepted: list[str] = []
    decisions = []
    for text, context in zip(texts, contexts):
        novel = all(scorer.score(a, text)["rougeL"].fmeasure <= MAX_ROUGE_L for a in accepted + context)
        decisions.append(novel)
        if novel:
            accepted.append(text)
    return decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="instructions for RougeFilter")
    parser.add_argument("--n-rouge-score", type=int, default=500, help="prefix also filtered with rouge_score")
    args = parser.parse_args()

    records = read_records(SEEDS, required=("instruction",))
    texts = [seed_text(r["instruction"], str(r.get("input") or "")) for r in records[: args.n]]
    pool = [seed_text(r["instruction"], str(r.get("input") or "")) for r in records[args.n : args.n + 2000]]
    rng = np.random.default_rng(0)
    contexts = [[pool[i] for i in rng.choice(len(pool), IN_CONTEXT, replace=False)] for _ in texts]

    start = time.perf_counter()
    rouge_filter = RougeFilter(MAX_ROUGE_L)
    decisions = [rouge_filter.accept(text).novel for text in texts]
    alone = time.perf_counter() - start
    print(
        f"RougeFilter: {len(texts)} instructions against the accepted set only, "
        f"{sum(decisions)} accepted, {alone:.2f} s"
    )
    start = time.perf_counter()
    rouge_filter = RougeFilter(MAX_ROUGE_L)
    decisions = [rouge_filter.accept(text, context).novel for text, context in zip(texts, contexts)]
    fast = time.perf_counter() - start
    print(
        f"RougeFilter: {len(texts)} instructions against the accepted set and {IN_CONTEXT} in-context examples each, "
        f"{sum(decisions)} accepted, {fast:.2f} s"
    )

    prefix, prefix_contexts = texts[: args.n_rouge_score], contexts[: args.n_rouge_score]
    start = time.perf_counter()
    reference = rouge_score_filter(prefix, prefix_contexts)
    slow = time.perf_counter() - start
    start = time.perf_counter()
    prefix_filter = RougeFilter(MAX_ROUGE_L)
    prefix_decisions = [prefix_filter.accept(text, context).novel for text, context in zip(prefix, prefix_contexts)]
    fast_prefix = time.perf_counter() - start
    agree = sum(a == b for a, b in zip(prefix_decisions, reference))
    print(
        f"first {len(prefix)}: rouge_score {slow:.2f} s, RougeFilter {fast_prefix:.3f} s "
        f"({slow / fast_prefix:.0f}x faster); decisions agree on {agree}/{len(prefix)}"
    )


if __name__ == "__main__":
    main()
