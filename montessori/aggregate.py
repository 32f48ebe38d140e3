"""Every experiment under results/ in one DuckDB file that the plain duckdb CLI can open.

Tables carry the pipeline's lineage ids plus an `experiment` column, so a final training example can be followed
back to its teacher prompt, seeds and teacher iteration, and an iteration candidate to its influence and pairs.
The views (queries/views.sql) answer the project's standing questions: table1, lineage, siblings, costs,
contamination.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import yaml

from montessori.contamination import alpaca_eval_prompts, find_matches, index_benchmark, load_benchmarks
from montessori.io import DataError
from montessori.result_files import (
    CONFIG_FILE,
    EVAL_PATTERN,
    JOBS_PATTERN,
    PARQUET_SOURCES,
    experiment_dirs,
    experiment_files,
)
from montessori.result_rows import canonical_json, eval_rows, evaluated_item_rows, job_rows, method_iteration

VIEWS_SQL = Path(__file__).resolve().parent.parent / "queries" / "views.sql"

# Table -> column -> DuckDB type. Columns before the pipeline's own come from the file's place under results/.
TABLES: dict[str, dict[str, str]] = {
    "experiments": {"experiment": "VARCHAR", "config": "VARCHAR", "config_hash": "VARCHAR", "iterations": "INTEGER"},
    "seeds": {
        "experiment": "VARCHAR", "seed_id": "VARCHAR", "seed_text": "VARCHAR", "source": "VARCHAR",
        "source_index": "BIGINT",
    },
    "reference": {"experiment": "VARCHAR", "reference_id": "VARCHAR", "instruction": "VARCHAR", "response": "VARCHAR"},
    # method is set only for final candidates: the methods share their candidate ids (same seeds, stage "final").
    "candidates": {
        "experiment": "VARCHAR", "method": "VARCHAR", "candidate_id": "VARCHAR", "prompt_id": "VARCHAR",
        "stage": "VARCHAR", "iteration": "INTEGER", "teacher": "VARCHAR", "seed_ids": "VARCHAR[]",
        "n_generated_in_context": "INTEGER", "prompt": "VARCHAR", "raw_output": "VARCHAR",
        "output_finish_reason": "VARCHAR", "instruction": "VARCHAR", "response": "VARCHAR",
        "response_finish_reason": "VARCHAR", "prompt_tokens": "INTEGER", "output_tokens": "INTEGER",
        "response_tokens": "INTEGER", "verdict": "VARCHAR", "rouge_l": "DOUBLE", "rouge_l_match": "VARCHAR",
        "rouge_l_source": "VARCHAR",
    },
    "influence": {
        "experiment": "VARCHAR", "iteration": "INTEGER", "candidate_id": "VARCHAR", "prompt_id": "VARCHAR",
        "loss_before": "DOUBLE", "loss_null_step": "DOUBLE", "loss_after": "DOUBLE",
        "influence_before_step": "DOUBLE", "influence_null_step": "DOUBLE", "influence": "DOUBLE",
        "baseline": "VARCHAR", "mode": "VARCHAR", "influence_exact": "DOUBLE", "validation_spearman": "DOUBLE",
        "validation_sign_agreement": "DOUBLE", "validation_max_relative_error": "DOUBLE", "shard": "INTEGER",
    },
    # method: the teacher loop whose DPO the pairs trained (montessori, or the self_reward baseline); influences
    # for Montessori's pairs, the teacher's own rewards for Self-Reward's.
    "pairs": {
        "experiment": "VARCHAR", "method": "VARCHAR", "iteration": "INTEGER", "pair_id": "VARCHAR",
        "prompt_id": "VARCHAR", "prompt": "VARCHAR", "chosen": "VARCHAR", "rejected": "VARCHAR",
        "chosen_candidate_id": "VARCHAR", "rejected_candidate_id": "VARCHAR", "chosen_influence": "DOUBLE",
        "rejected_influence": "DOUBLE", "chosen_reward": "DOUBLE", "rejected_reward": "DOUBLE",
    },
    # The Self-Reward loop's judgments of its candidates (reward 0-5, NaN when unparsable).
    "rewards": {
        "experiment": "VARCHAR", "iteration": "INTEGER", "candidate_id": "VARCHAR", "prompt_id": "VARCHAR",
        "reward": "DOUBLE", "judgment": "VARCHAR", "judge": "VARCHAR",
    },
    # LLM2LLM's tests: in round `iteration`, the student's answer to each example of its seed set (candidate_id,
    # self_instruct's), the grader's judgment and whether the student failed it.
    "llm2llm_tests": {
        "experiment": "VARCHAR", "iteration": "INTEGER", "candidate_id": "VARCHAR", "prompt_id": "VARCHAR",
        "instruction": "VARCHAR", "reference": "VARCHAR", "answer": "VARCHAR", "answer_finish_reason": "VARCHAR",
        "judgment": "VARCHAR", "verdict": "VARCHAR", "failed": "BOOLEAN", "judge": "VARCHAR",
    },
    # augmented_from: for an example LLM2LLM added, the failed example it was written from (NULL elsewhere).
    "train_sets": {
        "experiment": "VARCHAR", "method": "VARCHAR", "candidate_id": "VARCHAR", "prompt_id": "VARCHAR",
        "stage": "VARCHAR", "iteration": "INTEGER", "teacher": "VARCHAR", "seed_ids": "VARCHAR[]",
        "instruction": "VARCHAR", "response": "VARCHAR", "augmented_from": "VARCHAR",
    },
    # iteration: the teacher iteration of the method's final teacher (NULL for no_finetune, which has none).
    # headline: the metric the benchmark reports as its score. `limit` is an SQL keyword, hence item_limit.
    "eval_scores": {
        "experiment": "VARCHAR", "method": "VARCHAR", "iteration": "INTEGER", "benchmark": "VARCHAR",
        "metric": "VARCHAR", "value": "DOUBLE", "headline": "BOOLEAN", "n_items": "INTEGER", "judge": "VARCHAR",
        "source": "VARCHAR", "item_limit": "INTEGER", "model": "VARCHAR", "subset": "VARCHAR",
    },
    # The AlpacaEval items each evaluation scored, per subset (heldout, all).
    "evaluated_items": {
        "experiment": "VARCHAR", "method": "VARCHAR", "benchmark": "VARCHAR", "subset": "VARCHAR",
        "item_id": "VARCHAR",
    },
    # One row per run of a Snakemake benchmark file (a `repeat()` benchmark has several).
    "jobs": {
        "experiment": "VARCHAR", "rule": "VARCHAR", "wildcards": "VARCHAR", "run": "INTEGER", "seconds": "DOUBLE",
        "max_rss_mb": "DOUBLE", "cpu_seconds": "DOUBLE", "io_in_mb": "DOUBLE", "io_out_mb": "DOUBLE",
        "mean_load": "DOUBLE",
    },
    "contamination_matches": {
        "experiment": "VARCHAR", "source": "VARCHAR", "item_id": "VARCHAR", "benchmark": "VARCHAR",
        "benchmark_index": "INTEGER", "match": "VARCHAR",
    },
    "contamination_benchmarks": {"benchmark": "VARCHAR", "n_prompts": "INTEGER", "ngram": "INTEGER", "note": "VARCHAR"},
    # Evaluated benchmark items that overlap a source (reference set, seed pool) of the same experiment.
    "contamination_evaluated": {
        "experiment": "VARCHAR", "source": "VARCHAR", "benchmark": "VARCHAR", "item_id": "VARCHAR",
        "match": "VARCHAR",
    },
}  # fmt: skip


# Columns only some files of a table have (NULL for the others): each loop's pair scores, LLM2LLM's parents.
OPTIONAL: dict[str, set[str]] = {table: set() for table in TABLES} | {
    "pairs": {"chosen_influence", "rejected_influence", "chosen_reward", "rejected_reward"},
    "train_sets": {"augmented_from"},
}


def config_hash(config: Any) -> str:
    """sha256 of canonical JSON: key order and YAML layout do not change the hash."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
    for table, columns in TABLES.items():
        body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
        con.execute(f"CREATE TABLE {table} ({body})")


def _insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=list(TABLES[table]))
    con.register("incoming", frame)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
    finally:
        con.unregister("incoming")


def _insert_parquet(con: duckdb.DuckDBPyConnection, table: str, path: Path, constants: dict[str, Any]) -> None:
    """The table's columns of one Parquet file (extra columns are ignored, missing ones are an error unless
    OPTIONAL, then NULL).

    Columns that any path pattern of the table supplies (experiment, method, iteration) come from `constants`
    or stay NULL (warm-up and iteration candidates have no method).
    """
    present = set(pq.read_schema(path).names)
    from_path = {"experiment"}
    for source in PARQUET_SOURCES[table]:
        from_path.update(source.names, (name for name, _ in source.constants))
    wanted = [c for c in TABLES[table] if c not in from_path and (c in present or c not in OPTIONAL[table])]
    missing = [c for c in wanted if c not in present]
    if missing:
        has = ", ".join(sorted(present))
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} needed for table {table} (has: {has})")
    select = ", ".join([f'? AS "{c}"' for c in constants] + [f'"{c}"' for c in wanted])
    con.execute(f"INSERT INTO {table} BY NAME SELECT {select} FROM read_parquet(?)", [*constants.values(), str(path)])


def _load_config(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a mapping of config keys, got {type(config).__name__}")
    return config


def _load_experiment(con: duckdb.DuckDBPyConnection, experiment_dir: Path) -> None:
    experiment = experiment_dir.name
    config = _load_config(experiment_dir / CONFIG_FILE)
    _insert_rows(con, "experiments", [{
        "experiment": experiment,
        "config": canonical_json(config) if config is not None else None,
        "config_hash": config_hash(config) if config is not None else None,
        "iterations": config.get("iterations") if config is not None else None,
    }])  # fmt: skip
    files = experiment_files(experiment_dir)
    for table, sources in PARQUET_SOURCES.items():
        for source in sources:
            for relative in files:
                match = re.fullmatch(source.pattern, relative)
                if match:
                    from_path = {n: int(v) if n == "iteration" else v for n, v in zip(source.names, match.groups())}
                    constants = {"experiment": experiment, **dict(source.constants), **from_path}
                    _insert_parquet(con, table, experiment_dir / relative, constants)
    scores, evaluated = [], []
    for relative in files:
        match = re.fullmatch(EVAL_PATTERN, relative)
        if match:
            method = match.group(1)
            iteration = method_iteration(method, config, experiment_dir / "final" / method / "train.parquet")
            scores += eval_rows(experiment_dir / relative, experiment, method, iteration)
            evaluated += evaluated_item_rows(experiment_dir / relative, experiment, method)
    _insert_rows(con, "eval_scores", scores)
    _insert_rows(con, "evaluated_items", evaluated)
    jobs = [row for r in files if re.fullmatch(JOBS_PATTERN, r) for row in job_rows(experiment_dir / r, experiment_dir)]
    _insert_rows(con, "jobs", jobs)


def _load_contamination(con: duckdb.DuckDBPyConnection, data_dir: Path, ngram: int) -> None:
    indexes = load_benchmarks(data_dir, ngram)
    _insert_rows(con, "contamination_benchmarks", [
        {"benchmark": i.benchmark, "n_prompts": i.n_prompts, "ngram": ngram, "note": i.note} for i in indexes
    ])  # fmt: skip
    sources = {
        "reference": "SELECT experiment, reference_id, instruction FROM reference",
        "seeds": "SELECT experiment, seed_id, seed_text FROM seeds",
    }
    rows, evaluated_rows = [], []
    evaluated = _evaluated_texts(con, data_dir)
    for source, sql in sources.items():
        by_experiment: dict[str, list[tuple[str, str]]] = {}
        for experiment, item_id, text in con.execute(sql + " ORDER BY ALL").fetchall():
            by_experiment.setdefault(experiment, []).append((item_id, text))
        for experiment, items in by_experiment.items():
            for index in indexes:
                rows += [
                    {"experiment": experiment, "source": source, "benchmark": index.benchmark, **match}
                    for match in find_matches(items, index, ngram)
                ]
            # The other way round for what was evaluated: which scored items does this source contain?
            source_index = index_benchmark(source, [text for _, text in items], ngram)
            for benchmark, scored in evaluated.get(experiment, {}).items():
                evaluated_rows += [
                    {"experiment": experiment, "source": source, "benchmark": benchmark, "item_id": m["item_id"],
                     "match": m["match"]}
                    for m in find_matches(scored, source_index, ngram)
                ]  # fmt: skip
    _insert_rows(con, "contamination_matches", rows)
    _insert_rows(con, "contamination_evaluated", evaluated_rows)


def _evaluated_texts(con: duckdb.DuckDBPyConnection, data_dir: Path) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """experiment -> benchmark -> (item_id, prompt text) of every evaluated item (AlpacaEval's, by position)."""
    prompts = alpaca_eval_prompts(data_dir)
    texts: dict[str, dict[str, list[tuple[str, str]]]] = {}
    if not prompts:  # not checked, as contamination_benchmarks notes for the missing file
        return texts
    for experiment, benchmark, item_id in con.execute(
        "SELECT DISTINCT experiment, benchmark, item_id FROM evaluated_items ORDER BY ALL"
    ).fetchall():
        position = int(item_id.rsplit("-", 1)[1])
        if position >= len(prompts):
            raise DataError(
                f"experiment {experiment}: evaluated item {item_id} is not one of the {len(prompts)} prompts"
            )
        texts.setdefault(experiment, {}).setdefault(benchmark, []).append((item_id, prompts[position]))
    return texts


def build_database(
    results_dir: str | Path,
    out_path: str | Path,
    data_dir: str | Path = "data",
    ngram: int = 8,
    threads: int | None = None,
) -> dict[str, int]:
    """Load every experiment under `results_dir` into a fresh DuckDB file at `out_path`; rows per table.

    The file is built beside `out_path` and moved over it at the end, so readers never see half a database.
    `data_dir` holds the benchmark files of the contamination check; `ngram` is its near-duplicate n.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    _remove_database(tmp)
    try:
        con = duckdb.connect(str(tmp))
        try:
            if threads is not None:
                con.execute(f"SET threads = {int(threads)}")
            _create_tables(con)
            for experiment_dir in experiment_dirs(results_dir):
                _load_experiment(con, experiment_dir)
            _load_contamination(con, Path(data_dir), ngram)
            con.execute(VIEWS_SQL.read_text(encoding="utf-8"))
            counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}
        finally:
            con.close()
        os.replace(tmp, out_path)
    finally:
        _remove_database(tmp)
    return counts


def _remove_database(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + ".wal")):
        leftover.unlink(missing_ok=True)
