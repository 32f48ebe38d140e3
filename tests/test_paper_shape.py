"""configs/paper_shape.yaml end to end: configs/paper.yaml's structure at tiny size, run to table1."""

import json
import shutil

import duckdb
import pandas as pd
import pytest
import yaml

from montessori.chat_format import saved_format
from tests.conftest import ROOT
from tests.test_pipeline import planned_jobs, snakemake

CONFIG = "configs/paper_shape.yaml"
BENCHMARKS = ("alpaca_eval", "mt_bench", "arc_challenge", "gsm8k", "hellaswag", "gpqa", "mmlu")


@pytest.mark.e2e
def test_paper_shaped_run_to_table1(tmp_path):
    """A base student in the plain format, before_step influence, 3 shards, 2 iterations, it1 and it2 students,
    every benchmark; then a change of the judge's chat format reruns the judged evaluations only."""
    results = ROOT / "results" / "paper_shape"
    shutil.rmtree(results, ignore_errors=True)
    snakemake("--configfile", CONFIG, "--cores", "2")

    for iteration in (1, 2):
        influence = pd.read_parquet(results / f"iter{iteration}/influence.parquet")
        assert set(influence["baseline"]) == {"before_step"} and set(influence["shard"]) == {1, 2, 3}
        pairs = pd.read_parquet(results / f"iter{iteration}/pairs.parquet")
        assert len(pairs) > 0 and (pairs["chosen_influence"] > 0).all()
    # The base student learned, and keeps, the explicit format; so do the students of every final set.
    assert saved_format(results / "warmup/student/model")["spec"] == "plain"
    for method in ("self_instruct", "montessori_it1", "montessori"):
        assert saved_format(results / f"final/{method}/student")["spec"] == "plain"
        assert len(pd.read_parquet(results / f"final/{method}/train.parquet")) == 4
    for method in ("no_finetune", "self_instruct", "montessori_it1", "montessori"):
        for benchmark in BENCHMARKS:
            record = json.loads((results / f"eval/{method}/{benchmark}.json").read_text())
            assert record["n_items"] >= 1, (method, benchmark)

    con = duckdb.connect(str(ROOT / "results/montessori.duckdb"), read_only=True)
    table1 = con.execute(
        "SELECT method, iteration, alpaca_eval_subset FROM table1 WHERE experiment = 'paper_shape'"
    ).fetchall()
    assert table1 == [("no_finetune", None, "heldout"), ("self_instruct", 0, "heldout"), ("montessori", 1, "heldout"),
                      ("montessori", 2, "heldout")]  # fmt: skip
    # No held-out item is a reference instruction.
    overlap = con.execute(
        "SELECT exact FROM contamination WHERE experiment = 'paper_shape' AND source = 'reference' "
        "AND scope = 'evaluated heldout'"
    ).fetchall()
    assert overlap == [(0,)]

    assert planned_jobs("--configfile", CONFIG) == {}
    changed = yaml.safe_load((ROOT / CONFIG).read_text())
    changed["models"]["chat_template"]["judge"] = "chatml"
    changed_path = tmp_path / "judge_format.yaml"
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert planned_jobs("--configfile", str(changed_path)) == {
        "alpaca_eval": 4,
        "mt_bench": 4,
        "snapshot_config": 1,
        "aggregate": 1,
        "plots": 1,
        "table1": 1,
        "all": 1,
    }
