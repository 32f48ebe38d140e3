"""The report's figures and Table 1 files, read from the results database.

matplotlib's object API (Figure, not pyplot) renders straight to files with its Agg canvas: no global state, no
display, safe in Snakemake jobs and tests.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

TABLE1_BENCHMARKS = {
    "alpaca_eval_lc_win_rate": "AlpacaEval 2 LC-WR",
    "alpaca_eval_win_rate": "AlpacaEval 2 WR",
    "mt_bench": "MT-Bench",
    "arc_challenge": "ARC-C",
    "gsm8k": "GSM8K",
    "hellaswag": "HellaSwag",
    "gpqa": "GPQA",
    "mmlu": "MMLU",
}


def _save(figure: Figure, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def _placeholder(path: str | Path, title: str, message: str) -> None:
    """A figure that says what is missing: the report keeps its layout before every stage has run."""
    figure = Figure(figsize=(6, 2.5))
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    _save(figure, path)


def influence_histogram(influence: pd.DataFrame, path: str | Path) -> None:
    """Distribution of local influence per iteration (columns iteration, influence); > 0 helped the student."""
    title = "Local influence of the teacher's candidates"
    influence = influence.dropna(subset=["influence"])
    if influence.empty:
        _placeholder(path, title, "no influence scores yet")
        return
    figure = Figure(figsize=(7, 4))
    ax = figure.add_subplot()
    # Shared bin edges, so the iterations' histograms compare bar for bar.
    bins = np.histogram_bin_edges(influence["influence"], bins=min(40, max(5, len(influence) // 5)))
    for iteration, group in influence.groupby("iteration"):
        label = f"iteration {iteration} (n={len(group)})"
        ax.hist(group["influence"], bins=bins, histtype="step", linewidth=1.5, label=label)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel="influence = reference loss drop after one step", ylabel="candidates")
    ax.legend()
    _save(figure, path)


def chosen_vs_rejected(pairs: pd.DataFrame, path: str | Path) -> None:
    """Each DPO pair as a point (columns iteration, chosen_influence, rejected_influence)."""
    title = "DPO pairs: influence of the chosen and the rejected candidate"
    if pairs.empty:
        _placeholder(path, title, "no preference pairs yet")
        return
    figure = Figure(figsize=(6, 5))
    ax = figure.add_subplot()
    for iteration, group in pairs.groupby("iteration"):
        label = f"iteration {iteration} ({len(group)} pairs)"
        ax.scatter(group["rejected_influence"], group["chosen_influence"], s=14, alpha=0.7, label=label)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(title=title, xlabel="rejected influence", ylabel="chosen influence")
    ax.legend()
    _save(figure, path)


def scores_by_method(table1: pd.DataFrame, path: str | Path) -> None:
    """One panel per benchmark of the table1 view, one bar per method (and teacher iteration)."""
    title = "Student scores per method"
    benchmarks = [c for c in TABLE1_BENCHMARKS if c in table1 and table1[c].notna().any()]
    if table1.empty or not benchmarks:
        _placeholder(path, title, "no evaluation results yet (results/EXPERIMENT/eval/)")
        return
    labels = [m if pd.isna(i) else f"{m} (teacher {int(i)})" for m, i in zip(table1["method"], table1["iteration"])]
    columns = min(4, len(benchmarks))
    rows = -(-len(benchmarks) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows + 0.6))
    figure.suptitle(title)
    for k, benchmark in enumerate(benchmarks):
        ax = figure.add_subplot(rows, columns, k + 1)
        ax.bar(range(len(labels)), table1[benchmark].fillna(0), color=[f"C{i}" for i in range(len(labels))])
        ax.set_title(TABLE1_BENCHMARKS[benchmark], fontsize=10)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def cost_by_stage(costs: pd.DataFrame, path: str | Path) -> None:
    """Wall-clock seconds per rule (columns rule, seconds, n_jobs), the longest on top."""
    title = "Wall-clock time per stage"
    costs = costs.dropna(subset=["seconds"])
    if costs.empty:
        _placeholder(path, title, "no Snakemake benchmark files yet")
        return
    costs = costs.sort_values("seconds")
    figure = Figure(figsize=(7, 0.4 * len(costs) + 1.5))
    ax = figure.add_subplot()
    ax.barh([f"{r} ({n} jobs)" for r, n in zip(costs["rule"], costs["n_jobs"])], costs["seconds"])
    ax.set(title=title, xlabel="seconds (sum over the rule's jobs)")
    _save(figure, path)


def draw_report(db: str | Path, experiment: str, outputs: dict[str, str | Path]) -> None:
    """The figures of one experiment: keys influence, pairs, scores, costs of `outputs` name their files."""
    con = duckdb.connect(str(db), read_only=True)
    try:

        def frame(sql: str) -> pd.DataFrame:
            return con.execute(sql, [experiment]).df()

        influence = frame("SELECT iteration, influence FROM influence WHERE experiment = ?")
        pairs = frame("SELECT iteration, chosen_influence, rejected_influence FROM pairs WHERE experiment = ?")
        influence_histogram(influence, outputs["influence"])
        chosen_vs_rejected(pairs, outputs["pairs"])
        scores_by_method(frame("SELECT * FROM table1 WHERE experiment = ?"), outputs["scores"])
        cost_by_stage(frame("SELECT rule, seconds, n_jobs FROM costs WHERE experiment = ?"), outputs["costs"])
    finally:
        con.close()


def write_table1(db: str | Path, html_path: str | Path, csv_path: str | Path) -> pd.DataFrame:
    """The table1 view of every experiment in the database as HTML (for the report) and CSV."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        table1 = con.execute("SELECT * FROM table1").df()
    finally:
        con.close()
    table1.to_csv(csv_path, index=False)
    html = table1.rename(columns=TABLE1_BENCHMARKS).to_html(index=False, na_rep="–", float_format="{:.4g}".format)
    Path(html_path).write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Table 1</title></head><body>\n"
        "<h1>Table 1: student scores per experiment and method</h1>\n" + html + "\n</body></html>\n",
        encoding="utf-8",
    )
    return table1
