"""Overlap of our own texts (reference set, seed pool) with the prompts of the evaluation benchmarks.

Two tests per (text, benchmark): exact, the normalized texts are equal; near duplicate, the two share at least
one word n-gram (n = 8 by default; the GPT-3 paper used 13 on much longer documents). Texts shorter than n words
can only match exactly. GPQA stays encrypted at rest: it is decrypted in memory and its text never leaves this
process (only ids and counts are returned).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from montessori.io import DataError, read_records

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    """Lower case, every run of non-alphanumerics one space: punctuation and layout never decide a match."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def ngrams(normalized: str, n: int) -> set[str]:
    words = normalized.split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def alpaca_eval_prompts(data_dir: Path) -> list[str]:
    """The 805 AlpacaEval instructions, in benchmark order (an item id's number is its position); none if the
    file is missing."""
    path = Path(data_dir) / "alpaca_eval" / "alpaca_eval_instructions.json"
    return _alpaca_eval(Path(data_dir)) if path.exists() else []


def _alpaca_eval(data_dir: Path) -> list[str]:
    path = data_dir / "alpaca_eval" / "alpaca_eval_instructions.json"
    return [r["instruction"] for r in read_records(path, required=("instruction",))]


def _mt_bench(data_dir: Path) -> list[str]:
    path = data_dir / "mt_bench" / "question.jsonl"
    prompts = []
    for index, record in enumerate(read_records(path)):
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise DataError(f"{path}: record {index}: 'turns' must be a non-empty list of strings")
        prompts.append(turns[0])
    return prompts


def _gsm8k(data_dir: Path) -> list[str]:
    return [r["question"] for r in read_records(data_dir / "gsm8k" / "test.jsonl", required=("question",))]


def _arc_challenge(data_dir: Path) -> list[str]:
    path = data_dir / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    return [r["question"] for r in read_records(path, required=("question",))]


def _hellaswag(data_dir: Path) -> list[str]:
    return [r["ctx"] for r in read_records(data_dir / "hellaswag" / "hellaswag_val.jsonl.gz", required=("ctx",))]


def _csv_column(path: Path, text: str, column: str) -> list[str]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and column not in rows[0]:
        raise DataError(f"{path}: no column {column!r} (has: {', '.join(rows[0])})")
    return [row[column] for row in rows]


def _mmlu(data_dir: Path) -> list[str]:
    files = sorted((data_dir / "mmlu" / "test").glob("*_test.csv"))
    if not files:
        raise DataError(f"{data_dir / 'mmlu' / 'test'}: no *_test.csv files")
    return [q for path in files for q in _csv_column(path, path.read_text(encoding="utf-8"), "question")]


def gpqa_password(source_txt: Path) -> bytes:
    """The archive password, as data/gpqa/SOURCE.txt states it ("password: WORD")."""
    match = re.search(r"password:\s*([^\s,)]+)", source_txt.read_text(encoding="utf-8"))
    if not match:
        raise DataError(f"{source_txt}: no 'password: ...' line for the GPQA archive")
    return match.group(1).encode()


def _gpqa(data_dir: Path) -> list[str]:
    archive = data_dir / "gpqa" / "gpqa_diamond.zip"
    with zipfile.ZipFile(archive) as z:
        text = z.read("gpqa_diamond.csv", pwd=gpqa_password(data_dir / "gpqa" / "SOURCE.txt")).decode("utf-8")
    return _csv_column(archive, text, "Question")


# Benchmark -> (its file under data/, the loader of the text a model is prompted with: MT-Bench turn 1,
# HellaSwag the context to complete, otherwise the question or instruction).
BENCHMARK_PROMPTS: dict[str, tuple[str, Callable[[Path], list[str]]]] = {
    "alpaca_eval": ("alpaca_eval/alpaca_eval_instructions.json", _alpaca_eval),
    "mt_bench": ("mt_bench/question.jsonl", _mt_bench),
    "arc_challenge": ("arc_challenge/ARC-Challenge-Test.jsonl", _arc_challenge),
    "gsm8k": ("gsm8k/test.jsonl", _gsm8k),
    "hellaswag": ("hellaswag/hellaswag_val.jsonl.gz", _hellaswag),
    "gpqa": ("gpqa/gpqa_diamond.zip", _gpqa),
    "mmlu": ("mmlu/test", _mmlu),
}


@dataclass
class BenchmarkIndex:
    """One benchmark's prompts as lookups: normalized text and n-gram -> the first prompt holding it."""

    benchmark: str
    n_prompts: int
    note: str
    exact: dict[str, int]
    grams: dict[str, int]


def index_benchmark(benchmark: str, prompts: list[str], n: int, note: str = "") -> BenchmarkIndex:
    exact: dict[str, int] = {}
    grams: dict[str, int] = {}
    for position, prompt in enumerate(prompts):
        normalized = normalize(prompt)
        if not normalized:
            continue
        exact.setdefault(normalized, position)
        for gram in ngrams(normalized, n):
            grams.setdefault(gram, position)
    return BenchmarkIndex(benchmark, len(prompts), note, exact, grams)


def load_benchmarks(data_dir: str | Path, n: int) -> list[BenchmarkIndex]:
    """Every benchmark of BENCHMARK_PROMPTS; one whose files are missing is kept with 0 prompts and a note."""
    data_dir = Path(data_dir)
    indexes = []
    for benchmark, (relative, load) in BENCHMARK_PROMPTS.items():
        if not (data_dir / relative).exists():
            indexes.append(index_benchmark(benchmark, [], n, f"not checked: {data_dir / relative} is missing"))
            continue
        note = "decrypted in memory only" if benchmark == "gpqa" else ""
        indexes.append(index_benchmark(benchmark, load(data_dir), n, note))
    return indexes


def find_matches(items: Iterable[tuple[str, str]], index: BenchmarkIndex, n: int) -> list[dict[str, object]]:
    """(item_id, text) pairs that overlap the benchmark: match "exact" or "ngram", and the benchmark position."""
    matches = []
    for item_id, text in items:
        normalized = normalize(text)
        if not normalized:
            continue
        if normalized in index.exact:
            matches.append({"item_id": item_id, "benchmark_index": index.exact[normalized], "match": "exact"})
            continue
        hit = min((index.grams[g] for g in ngrams(normalized, n) if g in index.grams), default=None)
        if hit is not None:
            matches.append({"item_id": item_id, "benchmark_index": hit, "match": "ngram"})
    return matches
