"""Seed pooling: the instructions the teacher sees as in-context examples, and the reference set of influence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from montessori.io import DataError, read_records


def seed_text(instruction: str, input_text: str) -> str:
    """The paper's seed text: the instruction, followed by its input when there is one."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return f"{instruction} {input_text}" if input_text else instruction


def stable_id(prefix: str, text: str) -> str:
    """An id that depends only on the text, so it survives reshuffles and re-pooling."""
    return f"{prefix}{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def pool_seeds(paths: list[str | Path], seed: int) -> pd.DataFrame:
    """Merge the seed files, drop empty and duplicate seeds (first occurrence wins), shuffle by `seed`."""
    rows, seen = [], set()
    for path in paths:
        for index, record in enumerate(read_records(path, required=("instruction",))):
            text = seed_text(record["instruction"], str(record.get("input") or ""))
            key = " ".join(text.split()).lower()
            if not key or key in seen:
                continue
            seen.add(key)
            rows.append({"seed_id": stable_id("s", key), "seed_text": text, "source": str(path), "source_index": index})
    if not rows:
        raise DataError(f"no usable seeds in {', '.join(map(str, paths))}: every record is empty or a duplicate")
    order = np.random.default_rng(seed).permutation(len(rows))
    return pd.DataFrame([rows[i] for i in order]).reset_index(drop=True)


def reference_set(path: str | Path, n: int) -> pd.DataFrame:
    """The first `n` {instruction, response} records of `path`: the set whose loss local influence measures."""
    records = read_records(path, required=("instruction", "response"))
    records = [r for r in records if r["instruction"].strip() and r["response"].strip()][:n]
    if not records:
        raise DataError(f"{path}: the reference set is empty (no record with a non-empty instruction and response)")
    return pd.DataFrame(
        {
            "reference_id": [stable_id("r", r["instruction"]) for r in records],
            "instruction": [r["instruction"] for r in records],
            "response": [r["response"] for r in records],
        }
    )
