"""Which files under results/ the DuckDB database reads, and the aggregate rule's inputs.

Apart from montessori.aggregate so that building the DAG (rules/report.smk) imports neither duckdb nor pandas.
"""

from __future__ import annotations

import re
from pathlib import Path

# Table -> files under results/EXPERIMENT/ -> the constant columns their path gives (groups of the pattern).
PARQUET_SOURCES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "seeds": [(r"pool/seeds\.parquet", ())],
    "reference": [(r"pool/reference\.parquet", ())],
    "candidates": [
        (r"warmup/candidates\.parquet", ()),
        (r"iter[0-9]+/candidates\.parquet", ()),
        (r"final/([^/]+)/candidates\.parquet", ("method",)),
    ],
    "influence": [(r"iter([0-9]+)/influence\.parquet", ("iteration",))],
    "pairs": [(r"iter([0-9]+)/pairs\.parquet", ("iteration",))],
    "train_sets": [(r"final/([^/]+)/train\.parquet", ("method",))],
}
EVAL_BENCHMARKS = ("alpaca_eval", "mt_bench", "arc_challenge", "gsm8k", "hellaswag", "gpqa", "mmlu")
# eval/METHOD/ also holds inputs of the evaluations (e.g. alpaca_eval_outputs.json): only score files match.
EVAL_PATTERN = rf"eval/([^/]+)/({'|'.join(EVAL_BENCHMARKS)})\.json"
JOBS_PATTERN = r"benchmarks/.+\.tsv"
CONFIG_FILE = "config.yaml"
# A subfolder of results/ is an experiment when it holds one of these (results/ also holds the database).
_MARKERS = re.compile(r"config\.yaml|pool|warmup|iter[0-9]+|final|eval|benchmarks")


def experiment_dirs(results_dir: str | Path) -> list[Path]:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    return sorted(
        d for d in results_dir.iterdir()
        if d.is_dir() and not d.name.startswith(".") and any(_MARKERS.fullmatch(c.name) for c in d.iterdir())
    )  # fmt: skip


def experiment_files(experiment_dir: Path) -> list[str]:
    """Paths (relative to the experiment) of the files build_database reads."""
    patterns = [p for sources in PARQUET_SOURCES.values() for p, _ in sources]
    patterns += [EVAL_PATTERN, JOBS_PATTERN, CONFIG_FILE]
    relative = (p.relative_to(experiment_dir).as_posix() for p in experiment_dir.rglob("*") if p.is_file())
    return sorted(r for r in relative if any(re.fullmatch(p, r) for p in patterns))


def source_files(results_dir: str | Path) -> list[Path]:
    """Every file build_database reads, in a stable order."""
    return [d / r for d in experiment_dirs(results_dir) for r in experiment_files(d)]


def rule_inputs(
    results_dir: str | Path, experiment: str, outputs: list[str], downstream_rules: tuple[str, ...] = ()
) -> list[str]:
    """The aggregate rule's inputs: this experiment's `outputs` (written by the DAG) plus every file the database
    reads that the DAG does not write, globbed now, so a change to any of them rebuilds the database.

    Left out: this experiment's benchmark TSVs (they change only when their job reruns, which rebuilds the
    database anyway, and listing them would change the input set between two runs), and every experiment's
    TSVs of `downstream_rules`, the rules that read the database (they would make two experiments rebuild it
    in turn). This experiment's eval files stay in, beside those of `outputs`: a benchmark no longer in the
    config keeps its old scores in the database, and a change to them rebuilds it.
    """
    untracked = []
    for experiment_dir in experiment_dirs(results_dir):
        for relative in experiment_files(experiment_dir):
            top, _, rest = relative.partition("/")
            if top == "benchmarks" and rest.split("/")[0].removesuffix(".tsv") in downstream_rules:
                continue
            if experiment_dir.name == experiment and top != "eval":
                continue
            untracked.append(str(experiment_dir / relative))
    return sorted(set(outputs) | set(untracked))
