"""Rows of the files under results/ that are not Parquet: eval JSONs (scores, evaluated items) and Snakemake's
benchmark TSVs (seconds and memory of every job), checked as they are read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from montessori import methods
from montessori.io import DataError


def canonical_json(config: Any) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def method_iteration(method: str, config: dict[str, Any] | None, train: Path) -> int | None:
    """Table 1's iteration of the method (montessori/methods.py): its name and the run's `iterations` say it;
    without the run's config, the teacher iteration its train.parquet records (else NULL)."""
    if config is not None and "iterations" in config:
        try:
            return methods.method_iteration(method, int(config["iterations"]))
        except ValueError:
            return None
    if train.exists():
        iterations = pd.read_parquet(train, columns=["iteration"])["iteration"].dropna().unique()
        if len(iterations) == 1:
            return int(iterations[0])
    return None


def _number(value: Any, path: Path, key: str, kind: type = float) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise DataError(f"{path}: {key} must be {'an integer' if kind is int else 'a number'} or null, got {value!r}")
    return kind(value)


def _label(value: Any) -> str | None:
    """A text cell; a judge described by an object (model, endpoint, ...) is kept as its JSON."""
    return value if value is None or isinstance(value, str) else canonical_json(value)


def read_eval(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(result, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(result).__name__}")
    return result


def eval_rows(path: Path, experiment: str, method: str, iteration: int | None) -> list[dict[str, Any]]:
    """One row per metric of an eval JSON; the headline is the metric whose value is the file's `score`."""
    result = read_eval(path)
    scores = result.get("scores", {})
    if not isinstance(scores, dict):
        raise DataError(f"{path}: 'scores' must be an object of metric -> number")
    if "score" not in result:
        raise DataError(f"{path}: missing key 'score' (the headline number; has: {', '.join(sorted(result))})")
    score = _number(result["score"], path, "score")
    values = {metric: _number(v, path, f"scores.{metric}") for metric, v in scores.items()}
    # A file may name its headline metric; otherwise it is the first metric equal to the score.
    headline = result.get("metric") if result.get("metric") in values else None
    headline = headline or next((m for m, v in values.items() if v == score), None)
    if headline is None:
        values, headline = {**values, "score": score}, "score"
    common = {
        "experiment": experiment,
        "method": method,
        "iteration": iteration,
        # The path names the benchmark as the DAG does (the file's own name for it may differ, e.g. gpqa_diamond).
        "benchmark": path.stem,
        "n_items": _number(result.get("n_items"), path, "n_items", int),
        "judge": _label(result.get("judge")),
        "source": _label(result.get("source")),
        "item_limit": _number(result.get("limit"), path, "limit", int),
        "model": _label(result.get("model")),
        "subset": _label(result.get("subset")),
    }
    return [{**common, "metric": m, "value": v, "headline": m == headline} for m, v in values.items()]


def evaluated_item_rows(path: Path, experiment: str, method: str) -> list[dict[str, Any]]:
    """The items an AlpacaEval result scored, per subset (details.subsets.NAME.item_ids); none for results
    without subsets."""
    subsets = read_eval(path).get("details", {}).get("subsets", {})
    rows = []
    for subset, numbers in subsets.items():
        item_ids = numbers.get("item_ids") if isinstance(numbers, dict) else None
        if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
            raise DataError(f"{path}: details.subsets.{subset}.item_ids must be a list of item id strings")
        base = {"experiment": experiment, "method": method, "benchmark": path.stem, "subset": subset}
        rows += [{**base, "item_id": item_id} for item_id in item_ids]
    return rows


def job_rows(path: Path, experiment_dir: Path) -> list[dict[str, Any]]:
    """The runs of one Snakemake benchmark TSV; benchmarks/RULE/WILDCARDS.tsv or benchmarks/RULE.tsv."""
    parts = path.relative_to(experiment_dir / "benchmarks").with_suffix("").parts
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a Snakemake benchmark TSV ({e})") from None
    if "s" not in table.columns:
        raise DataError(f"{path}: no column 's' (seconds); has: {', '.join(table.columns)}")

    def column(name: str) -> list[float | None]:
        # Snakemake writes "NA" or "-" where it could not measure.
        values = pd.to_numeric(table[name], errors="coerce") if name in table else [math.nan] * len(table)
        return [None if math.isnan(v) else float(v) for v in values]

    columns = {"seconds": "s", "max_rss_mb": "max_rss", "cpu_seconds": "cpu_time", "io_in_mb": "io_in",
               "io_out_mb": "io_out", "mean_load": "mean_load"}  # fmt: skip
    measured = {ours: column(theirs) for ours, theirs in columns.items()}
    where = {"experiment": experiment_dir.name, "rule": parts[0], "wildcards": "/".join(parts[1:])}
    return [{**where, "run": run, **{c: v[run] for c, v in measured.items()}} for run in range(len(table))]
