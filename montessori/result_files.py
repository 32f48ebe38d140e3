"""Which files under results/ the DuckDB database reads, and the aggregate rule's inputs.

Apart from montessori.aggregate so that building the DAG (rules/report.smk) imports neither duckdb nor pandas.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

from montessori.methods import LLM2LLM, SELF_REWARD, parse_method


class Source(NamedTuple):
    """Files under results/EXPERIMENT/ that fill a table: their path pattern, the columns the pattern's groups
    give, and columns that are the same for every such file."""

    pattern: str
    names: tuple[str, ...] = ()
    constants: tuple[tuple[str, Any], ...] = ()


# Iteration candidates of the Montessori loop (and warm-up ones) have no method; the baselines' loops write theirs
# under self_reward/ and llm2llm/, which becomes their method.
PARQUET_SOURCES: dict[str, list[Source]] = {
    "seeds": [Source(r"pool/seeds\.parquet")],
    "reference": [Source(r"pool/reference\.parquet")],
    "candidates": [
        Source(r"warmup/candidates\.parquet"),
        Source(r"iter[0-9]+/candidates\.parquet"),
        Source(r"(self_reward|llm2llm)/iter[0-9]+/candidates\.parquet", ("method",)),
        Source(r"final/([^/]+)/candidates\.parquet", ("method",)),
    ],
    "influence": [Source(r"iter([0-9]+)/influence\.parquet", ("iteration",))],
    "pairs": [
        Source(r"iter([0-9]+)/pairs\.parquet", ("iteration",), (("method", "montessori"),)),
        Source(r"(self_reward)/iter([0-9]+)/pairs\.parquet", ("method", "iteration")),
    ],
    "rewards": [Source(r"self_reward/iter([0-9]+)/rewards\.parquet", ("iteration",))],
    "llm2llm_tests": [Source(r"llm2llm/iter([0-9]+)/tests\.parquet", ("iteration",))],
    "train_sets": [Source(r"final/([^/]+)/train\.parquet", ("method",))],
}
EVAL_BENCHMARKS = ("alpaca_eval", "mt_bench", "arc_challenge", "gsm8k", "hellaswag", "gpqa", "mmlu")
# eval/METHOD/ also holds inputs of the evaluations (e.g. alpaca_eval_outputs.json): only score files match.
EVAL_PATTERN = rf"eval/([^/]+)/({'|'.join(EVAL_BENCHMARKS)})\.json"
JOBS_PATTERN = r"benchmarks/.+\.tsv"
CONFIG_FILE = "config.yaml"
# A subfolder of results/ is an experiment when it holds one of these (results/ also holds the database).
_MARKERS = re.compile(r"config\.yaml|pool|warmup|iter[0-9]+|final|eval|benchmarks|self_reward|llm2llm")


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
    patterns = [source.pattern for sources in PARQUET_SOURCES.values() for source in sources]
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


def baseline_outputs(results: str, final_methods: list[str], iterations: int) -> list[str]:
    """The files of the baselines' loops under `results` (results/EXPERIMENT) that the final sets of
    `final_methods` need: Self-Reward's rewards, pairs and (from iteration 2) candidates, LLM2LLM's tests and new
    examples, up to the last iteration any of those methods asks for."""
    files = {SELF_REWARD: lambda i: ["rewards", "pairs"] + (["candidates"] if i > 1 else []),
             LLM2LLM: lambda i: ["tests", "candidates"]}  # fmt: skip
    outputs = []
    for family, names in files.items():
        used = [parse_method(m, iterations) for m in final_methods]
        last = max((method.iteration for method in used if method.family == family), default=0)
        outputs += [f"{results}/{family}/iter{i}/{name}.parquet" for i in range(1, last + 1) for name in names(i)]
    return outputs
