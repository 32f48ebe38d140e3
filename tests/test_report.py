"""The report rules on fixture results: the database and figures build, rerun only when a source changes, and
`snakemake --report` renders an HTML report holding the figures."""

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from montessori.aggregate import build_database
from montessori.plots import draw_report, write_table1
from tests.conftest import ROOT
from tests.test_aggregate import write_data, write_experiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("influence", "pairs", "scores", "costs")

# The pipeline's Snakefile without the pipeline: the report rules see finished fixture results, so no model runs.
SNAKEFILE = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
os.environ["PYTHONPATH"] = {str(ROOT)!r}
from montessori.config import validate_config

configfile: "config.yaml"
validate_config(config)
RESULTS = f"results/{{config['experiment']}}"
ITERATIONS = list(range(1, config["iterations"] + 1))
CONDA_ENV = "../envs/montessori.yaml"


def eval_targets():
    return expand(
        f"{{RESULTS}}/eval/{{{{method}}}}/{{{{benchmark}}}}.json",
        method=config["eval"]["methods"],
        benchmark=config["eval"]["benchmarks"],
    )


include: {str(ROOT / "rules" / "report.smk")!r}

rule all:
    input:
        REPORT_TARGETS,
"""


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", "Snakefile", "--cores", "2", *args]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def planned(workdir: Path) -> str:
    return snakemake(workdir, "-n", "--quiet", "rules").stdout


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    write_experiment(workdir / "results", "alpha", iterations=2, with_config=True)
    write_experiment(workdir / "results", "beta", iterations=1, with_config=False)
    write_data(workdir / "data")
    (workdir / "config.yaml").write_text(yaml.safe_dump({"experiment": "alpha", "iterations": 2}))
    (workdir / "Snakefile").write_text(SNAKEFILE)
    snakemake(workdir)
    return workdir


def test_rules_write_the_database_figures_and_table1(workflow):
    report = workflow / "results/alpha/report"
    assert (workflow / "results/montessori.duckdb").exists()
    for name in FIGURES:
        assert (report / f"{name}.png").read_bytes().startswith(PNG_MAGIC), name
    csv = (report / "table1.csv").read_text().splitlines()
    assert (
        csv[0].startswith("experiment,method,iteration,alpaca_eval_subset,alpaca_eval_lc_win_rate")
        and len(csv) == 1 + 4 + 3
    )  # alpha, beta rows
    assert "<table" in (report / "table1.html").read_text()
    assert (workflow / "results/alpha/benchmarks/plots.tsv").exists()
    assert (workflow / "results/logs/aggregate.log").exists()


def test_report_html_contains_the_figures(workflow):
    snakemake(workflow, "--report", "results/report.html")
    html = (workflow / "results/report.html").read_text()
    for name in FIGURES:
        assert f"{name}.png" in html, name
    assert base64.b64encode(PNG_MAGIC).decode()[:10] in html  # the figures are embedded, not linked
    assert "table1.html" in html and "Local influence of every scored candidate" in html


def test_nothing_reruns_until_another_experiment_changes(workflow):
    """Runs last in this module: it leaves the workflow's outputs out of date."""
    assert "aggregate" not in planned(workflow)
    # Snakemake compares checksums of small inputs, so the content must change, not just the time stamp.
    changed = workflow / "results/beta/eval/montessori/gsm8k.json"
    changed.write_text(changed.read_text().replace("60.0", "61.5"))
    jobs = planned(workflow)
    assert "aggregate" in jobs and "plots" in jobs and "table1" in jobs


def test_figures_say_what_is_missing_for_an_empty_experiment(tmp_path):
    (tmp_path / "results/empty/pool").mkdir(parents=True)
    db = tmp_path / "db.duckdb"
    build_database(tmp_path / "results", db, data_dir=tmp_path / "no-data")
    outputs = {name: tmp_path / f"{name}.png" for name in FIGURES}
    draw_report(db, "empty", outputs)
    assert all(path.read_bytes().startswith(PNG_MAGIC) for path in outputs.values())
    table1 = write_table1(db, tmp_path / "t.html", tmp_path / "t.csv")
    assert table1.empty and (tmp_path / "t.csv").read_text().startswith("experiment,method")
