"""The vendored benchmark files under data/ as in-memory `datasets` objects in the schema of their hub twins.

The task YAMLs in tasks/ name these functions as lm-eval `custom_dataset` loaders, so lm-eval's own prompt
templates and answer extraction run unchanged while nothing is fetched from the hub and nothing is written
to the datasets cache. lm-eval calls them with the task's metadata as keyword arguments, which they ignore.
"""

from __future__ import annotations

import csv
import io
import weakref
import zipfile
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from lm_eval.tasks.gpqa.zeroshot import utils as gpqa_zeroshot

from montessori.io import DataError, read_records

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data"

ARC_CHALLENGE_FILE = DATA_DIR / "arc_challenge" / "ARC-Challenge-Test.jsonl"
GSM8K_FILE = DATA_DIR / "gsm8k" / "test.jsonl"
HELLASWAG_FILE = DATA_DIR / "hellaswag" / "hellaswag_val.jsonl.gz"
MMLU_DIR = DATA_DIR / "mmlu"
GPQA_DIAMOND_ZIP = DATA_DIR / "gpqa" / "gpqa_diamond.zip"
GPQA_DIAMOND_MEMBER = "gpqa_diamond.csv"
# The public password of the official GPQA archive (github.com/idavidrein/gpqa README): it only keeps the
# questions out of web crawls, and the authors ask that they stay encrypted at rest.
GPQA_PASSWORD = b"deserted-untie-orchid"

MMLU_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]

_gpqa_processed: weakref.WeakKeyDictionary[Dataset, Dataset] = weakref.WeakKeyDictionary()


def _is_option(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("label"), str) and isinstance(value.get("text"), str)


def arc_challenge(**_: Any) -> DatasetDict:
    """ARC-Challenge test as allenai/ai2_arc: {id, question, choices: {text, label}, answerKey}."""
    docs = []
    for index, record in enumerate(read_records(ARC_CHALLENGE_FILE, required=("id", "question", "answer"))):
        where = f"{ARC_CHALLENGE_FILE}: record {index} ({record['id']})"
        options = record.get("options")
        if not isinstance(options, list) or not all(map(_is_option, options)):
            raise DataError(f"{where}: 'options' must be a list of {{label, text}} objects")
        labels = [o["label"] for o in options]
        if record["answer"] not in labels:
            raise DataError(f"{where}: answer {record['answer']!r} is not one of the option labels {labels}")
        docs.append(
            {
                "id": record["id"],
                "question": record["question"],
                "choices": {"text": [o["text"] for o in options], "label": labels},
                "answerKey": record["answer"],
            }
        )
    return DatasetDict({"test": Dataset.from_list(docs)})


def gsm8k(**_: Any) -> DatasetDict:
    """GSM8K test as openai/gsm8k "main": {question, answer}, the final answer after "#### "."""
    records = read_records(GSM8K_FILE, required=("question", "answer"))
    docs = [{"question": r["question"], "answer": r["answer"]} for r in records]
    return DatasetDict({"test": Dataset.from_list(docs)})


def hellaswag(**_: Any) -> DatasetDict:
    """HellaSwag validation as Rowan/hellaswag (the file keeps the hub's fields, label a string "0".."3")."""
    records = read_records(HELLASWAG_FILE, required=("activity_label", "ctx_a", "ctx_b", "label"))
    for index, record in enumerate(records):
        endings = record.get("endings")
        if not isinstance(endings, list) or len(endings) != 4:
            raise DataError(f"{HELLASWAG_FILE}: record {index}: 'endings' must be a list of 4 strings")
    return DatasetDict({"validation": Dataset.from_list(records)})


def _mmlu_split(subject: str, split: str) -> Dataset:
    path = MMLU_DIR / split / f"{subject}_{split}.csv"
    if not path.exists():
        raise DataError(f"{path}: file not found (MMLU subject {subject!r}, split {split!r})")
    docs = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != MMLU_COLUMNS:
            raise DataError(f"{path}:1: header must be {','.join(MMLU_COLUMNS)}, got {reader.fieldnames}")
        for row in reader:
            if row["answer"] not in ("0", "1", "2", "3"):
                raise DataError(f"{path}:{reader.line_num}: answer must be a 0-based index 0..3, got {row['answer']!r}")
            docs.append(
                {
                    "question": row["question"],
                    "subject": subject,
                    "choices": [row[f"choice{i}"] for i in range(4)],
                    "answer": int(row["answer"]),
                }
            )
    return Dataset.from_list(docs)


def mmlu(subject: str, **_: Any) -> DatasetDict:
    """One MMLU subject as cais/mmlu: {question, subject, choices, answer} with splits test and dev."""
    return DatasetDict({split: _mmlu_split(subject, split) for split in ("test", "dev")})


def gpqa_diamond(**_: Any) -> DatasetDict:
    """GPQA diamond as Idavidrein/gpqa "gpqa_diamond" (all columns of the official CSV, split train).

    The CSV is decrypted into memory only; the rows become an in-memory Dataset, which neither `datasets`
    nor lm-eval spills to the cache.
    """
    try:
        with zipfile.ZipFile(GPQA_DIAMOND_ZIP) as archive:
            text = archive.read(GPQA_DIAMOND_MEMBER, pwd=GPQA_PASSWORD).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{GPQA_DIAMOND_ZIP}: file not found") from None
    except (KeyError, RuntimeError, zipfile.BadZipFile) as e:
        raise DataError(f"{GPQA_DIAMOND_ZIP}: cannot read {GPQA_DIAMOND_MEMBER} with the GPQA password ({e})") from None
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return DatasetDict({"train": Dataset.from_list(rows)})


def gpqa_process_docs(dataset: Dataset) -> Dataset:
    """lm-eval's GPQA process_docs (it shuffles each question's choices), run once per dataset.

    lm-eval calls process_docs again each time it reads the documents: to build the prompts, then to score
    them. On hub data `datasets` caches the first result of that map on disk, so every call returns the same
    shuffle; an in-memory dataset has no such cache and would be reshuffled between prompting and scoring,
    scoring against the wrong letter. Keeping the first result per dataset restores the hub behaviour.
    """
    if dataset not in _gpqa_processed:
        _gpqa_processed[dataset] = gpqa_zeroshot.process_docs(dataset)
    return _gpqa_processed[dataset]
