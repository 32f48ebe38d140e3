"""The DuckDB results database: tables, views, idempotence, contamination, and the query CLI."""

import csv
import gzip
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from montessori.aggregate import TABLES, build_database, config_hash
from montessori.cli import format_table, main
from montessori.contamination import BENCHMARK_PROMPTS, gpqa_password
from montessori.io import DataError
from montessori.result_files import rule_inputs, source_files
from tests.conftest import ROOT

BENCHMARK_TSV_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
LM_EVAL_METRICS = {
    "arc_challenge": "acc_norm", "gsm8k": "exact_match", "hellaswag": "acc_norm", "gpqa": "acc", "mmlu": "acc",
}  # fmt: skip
TRAIN_COLUMNS = ["candidate_id", "prompt_id", "stage", "iteration", "teacher", "seed_ids", "instruction", "response"]
REFERENCE = ["What is the capital of France?", "Write a haiku about the sea in winter at night please."]
SEEDS = [f"Seed instruction number {i} about topic {i}." for i in range(8)]
# Shares an 8-word run with the fixture MMLU question but is not equal to it.
SEEDS[3] = "Please explain why the mitochondria is the powerhouse of the cell in detail."
MMLU_QUESTION = "Everyone knows the mitochondria is the powerhouse of the cell, but why?"


def _candidate(experiment, stage, iteration, prompt, index, seeds, verdict="ok"):
    candidate_id = f"{stage}-{prompt}-{index}"
    return {
        "candidate_id": candidate_id, "prompt_id": f"{stage}-{prompt}", "stage": stage, "iteration": iteration,
        "teacher": f"teacher_{max(iteration - 1, 0) if stage.startswith('iter') else iteration}",
        "seed_ids": seeds, "n_generated_in_context": 0, "prompt": f"prompt {prompt}",
        "raw_output": f"because <instruction>{experiment} {candidate_id}</instruction>",
        "instruction": f"{experiment} {candidate_id}", "response": f"answer {candidate_id}", "prompt_tokens": 10,
        "output_tokens": 5, "response_tokens": 3, "verdict": verdict, "rouge_l": 0.1, "rouge_l_match": "a seed",
        "rouge_l_source": "in_context", "output_finish_reason": "stop", "response_finish_reason": "stop",
    }  # fmt: skip


def _benchmark_tsv(path: Path, seconds: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    row = [seconds, f"0:00:{int(seconds):02d}", rss, 1, 1, 1, 0.5, 0.25, 50, seconds / 2]
    path.write_text(BENCHMARK_TSV_HEADER + "\t".join(map(str, row)) + "\n")


def _eval(path: Path, benchmark: str, method: str, value: float) -> None:
    if benchmark == "alpaca_eval":
        scores, judge = {"win_rate": value, "lc_win_rate": value + 1}, "judge-model"
    elif benchmark == "mt_bench":
        scores, judge = {"score": value, "score_turn1": value + 0.5, "score_turn2": value - 0.5}, "judge-model"
    else:
        scores, judge = {LM_EVAL_METRICS[benchmark]: value, f"{LM_EVAL_METRICS[benchmark]}_stderr": 0.01}, None
    headline = scores["lc_win_rate"] if benchmark == "alpaca_eval" else value
    result = {"benchmark": benchmark, "method": method, "scores": scores, "score": headline, "n_items": 3,
              "judge": judge, "model": f"student-{method}", "source": "offline", "limit": 3}  # fmt: skip
    if benchmark == "alpaca_eval":
        # AlpacaEval item 0 is the reference set's first instruction, item 1 is held out.
        subsets = {
            "heldout": {"item_ids": ["alpaca_eval-001"]},
            "all": {"item_ids": ["alpaca_eval-000", "alpaca_eval-001"]},
        }
        result.update(subset="heldout", details={"subsets": subsets})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def write_experiment(results: Path, experiment: str, iterations: int, with_config: bool) -> None:
    """A finished (tiny) run: pool, warm-up, K iterations with influence and pairs, the final sets of teacher_0,
    teacher_K and (K > 1) teacher_1, evals."""
    root = results / experiment
    # method -> the teacher iteration that writes its final set
    teachers = {"self_instruct": 0, **({"montessori_it1": 1} if iterations > 1 else {}), "montessori": iterations}
    for folder in ("pool", "warmup", *(f"final/{method}" for method in teachers)):
        (root / folder).mkdir(parents=True, exist_ok=True)
    if with_config:
        (root / "config.yaml").write_text(yaml.safe_dump({"experiment": experiment, "iterations": iterations}))
    seeds = {"seed_id": [f"s{i}" for i in range(len(SEEDS))], "seed_text": SEEDS, "source": "seeds.json"}
    pd.DataFrame({**seeds, "source_index": range(len(SEEDS))}).to_parquet(root / "pool/seeds.parquet")
    reference = {"reference_id": ["r0", "r1"], "instruction": REFERENCE, "response": ["Paris.", "Waves..."]}
    pd.DataFrame(reference).to_parquet(root / "pool/reference.parquet")
    warmup = [_candidate(experiment, "warmup", 0, "p0", 0, ["s0", "s1"])]
    pd.DataFrame(warmup).to_parquet(root / "warmup/candidates.parquet")
    for iteration in range(1, iterations + 1):
        stage, folder = f"iter{iteration}", root / f"iter{iteration}"
        folder.mkdir()
        candidates = [_candidate(experiment, stage, iteration, "p1", k, ["s0", "s1"]) for k in range(3)]
        candidates += [_candidate(experiment, stage, iteration, "p2", k, ["s5", "s6"]) for k in range(2)]
        candidates.append(_candidate(experiment, stage, iteration, "p2", 2, ["s5", "s6"], verdict="too_long"))
        pd.DataFrame(candidates).to_parquet(folder / "candidates.parquet")
        # p1: one helpful, two harmful candidates; p2: both helpful, so p2 yields no pair.
        influence = {f"{stage}-p1-0": 0.5, f"{stage}-p1-1": -0.25, f"{stage}-p1-2": -0.125,
                     f"{stage}-p2-0": 0.25, f"{stage}-p2-1": 0.0625}  # fmt: skip
        pd.DataFrame({
            "candidate_id": list(influence), "prompt_id": [c.rsplit("-", 1)[0] for c in influence],
            "loss_before": 2.0, "loss_null_step": 1.9, "loss_after": [1.9 - v for v in influence.values()],
            "influence_before_step": [0.1 + v for v in influence.values()],
            "influence_null_step": list(influence.values()), "influence": list(influence.values()),
            "baseline": "null_step", "mode": "first_order",
            # influence.validate: 1, exact-scored p1-0 of shard 0 and p2-0 of shard 1.
            "influence_exact": [0.51, None, None, 0.24, None], "validation_spearman": float("nan"),
            "validation_sign_agreement": 1.0, "validation_max_relative_error": [0.02, 0.04, 0.02, 0.04, 0.02],
            "shard": [0, 1, 0, 1, 0], "instruction": "passed through",
        }).to_parquet(folder / "influence.parquet")  # fmt: skip
        pd.DataFrame({
            "pair_id": [f"{stage}-pair{k}" for k in (1, 2)], "prompt_id": f"{stage}-p1", "iteration": iteration,
            "prompt": "prompt p1", "chosen": "raw chosen", "rejected": ["raw r1", "raw r2"],
            "chosen_candidate_id": f"{stage}-p1-0", "rejected_candidate_id": [f"{stage}-p1-1", f"{stage}-p1-2"],
            "chosen_influence": 0.5, "rejected_influence": [-0.25, -0.125],
        }).to_parquet(folder / "pairs.parquet")  # fmt: skip
        for shard in (1, 2):
            _benchmark_tsv(root / f"benchmarks/influence_shard/iter{iteration}-{shard}-of-2.tsv", 10.0, 300.0)
    for method, teacher in teachers.items():
        final = pd.DataFrame([
            _candidate(experiment, "final", teacher, "q0", 0, ["s0", "s2"]),
            _candidate(experiment, "final", teacher, "q1", 0, ["s7"]),
        ])  # fmt: skip
        final.to_parquet(root / f"final/{method}/candidates.parquet")
        final[TRAIN_COLUMNS].to_parquet(root / f"final/{method}/train.parquet")
        _benchmark_tsv(root / f"benchmarks/synthesize_final/{method}.tsv", 30.0, 900.0)
    _benchmark_tsv(root / "benchmarks/pool_seeds.tsv", 1.5, 100.0)
    benchmarks = ["alpaca_eval", "mt_bench", *LM_EVAL_METRICS] if with_config else ["alpaca_eval", "gsm8k"]
    # no_finetune 40, self_instruct 50, montessori 60, montessori_it1 55
    values = {"no_finetune": 40.0, "self_instruct": 50.0, "montessori_it1": 55.0, "montessori": 60.0}
    for method in ("no_finetune", *teachers):
        for benchmark in benchmarks:
            _eval(root / f"eval/{method}/{benchmark}.json", benchmark, method, values[method])
        # An input of the AlpacaEval job, beside the score files: not a score.
        (root / f"eval/{method}/alpaca_eval_outputs.json").write_text('[{"instruction": "i", "output": "o"}]')


def write_data(data: Path) -> None:
    """Tiny benchmark files in the layout of data/ (GPQA left out: it must come out as not checked)."""
    files = {
        "alpaca_eval/alpaca_eval_instructions.json": [
            {"instruction": "what is the capital of FRANCE"},
            {"instruction": "Name a bird that cannot fly."},
        ],
        "mt_bench/question.jsonl": {"question_id": 81, "turns": ["Write a poem.", "Shorter."]},
        "gsm8k/test.jsonl": {"question": "1+1?", "answer": "#### 2"},
        "arc_challenge/ARC-Challenge-Test.jsonl": {"question": "Why is the sky blue?"},
    }
    for relative, content in files.items():
        (data / relative).parent.mkdir(parents=True)
        (data / relative).write_text(json.dumps(content) + "\n")
    (data / "hellaswag").mkdir()
    with gzip.open(data / "hellaswag/hellaswag_val.jsonl.gz", "wt") as f:
        f.write(json.dumps({"ctx": "A man is sitting on a roof. he"}) + "\n")
    (data / "mmlu/test").mkdir(parents=True)
    with open(data / "mmlu/test/biology_test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        writer.writerow([MMLU_QUESTION, "a", "b", "c", "d", 0])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("aggregate")
    write_experiment(root / "results", "alpha", iterations=2, with_config=True)
    write_experiment(root / "results", "beta", iterations=1, with_config=False)
    write_data(root / "data")
    db = root / "results" / "montessori.duckdb"
    counts = build_database(root / "results", db, data_dir=root / "data")
    return root, db, counts


def query(db: Path, sql: str) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def test_every_table_has_its_declared_columns_and_types(built):
    _, db, counts = built
    columns = query(db, "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal")
    for table, declared in TABLES.items():
        got = columns[columns["table_name"] == table]
        assert dict(zip(got["column_name"], got["data_type"])) == declared, table
    # The baselines' own tables: see test_baselines_follow_their_own_lineage.
    assert all(counts[t] > 0 for t in TABLES if t not in ("rewards", "llm2llm_tests")), counts
    # No extension types: the plain duckdb CLI must read every column.
    types = set(query(db, "SELECT DISTINCT data_type FROM duckdb_columns() WHERE NOT internal")["data_type"])
    assert types <= {"VARCHAR", "INTEGER", "BIGINT", "DOUBLE", "BOOLEAN", "VARCHAR[]", "DOUBLE[]"}, types


def test_tables_hold_both_experiments_with_lineage(built):
    _, db, counts = built
    per_experiment = query(db, "SELECT experiment, count(*) AS n FROM influence GROUP BY ALL ORDER BY ALL")
    assert per_experiment.to_dict("list") == {"experiment": ["alpha", "beta"], "n": [10, 5]}
    validated = query(db, "SELECT shard, influence_exact, validation_max_relative_error AS error, "
                          "validation_spearman FROM influence WHERE experiment = 'beta' "
                          "AND influence_exact IS NOT NULL ORDER BY shard")  # fmt: skip
    assert validated[["shard", "influence_exact", "error"]].to_dict("list") == {
        "shard": [0, 1], "influence_exact": [0.51, 0.24], "error": [0.02, 0.04]
    }  # fmt: skip
    assert validated["validation_spearman"].isna().all()
    assert counts["candidates"] == (1 + 2 * 6 + 3 * 2) + (1 + 6 + 2 * 2)
    final = query(db, "SELECT method, count(*) AS n FROM candidates WHERE stage = 'final' AND experiment = 'alpha' "
                      "GROUP BY ALL ORDER BY ALL")  # fmt: skip
    assert final.to_dict("list") == {"method": ["montessori", "montessori_it1", "self_instruct"], "n": [2, 2, 2]}
    pairs = query(db, "SELECT iteration, count(*) AS n FROM pairs WHERE experiment = 'alpha' GROUP BY ALL ORDER BY ALL")
    assert pairs.to_dict("list") == {"iteration": [1, 2], "n": [2, 2]}
    seed_ids = query(db, "SELECT seed_ids FROM train_sets WHERE experiment = 'beta' AND method = 'montessori' "
                         "AND candidate_id = 'final-q0-0'")  # fmt: skip
    assert list(seed_ids["seed_ids"][0]) == ["s0", "s2"]


def test_experiments_snapshot_config_with_a_canonical_hash(built):
    _, db, _ = built
    experiments = query(db, "SELECT * FROM experiments ORDER BY experiment")
    alpha, beta = experiments.to_dict("records")
    assert json.loads(alpha["config"]) == {"experiment": "alpha", "iterations": 2}
    assert alpha["config_hash"] == config_hash({"iterations": 2, "experiment": "alpha"}) and alpha["iterations"] == 2
    assert beta["config"] is None and beta["config_hash"] is None


def test_eval_scores_are_long_with_teacher_iteration_and_headline(built):
    _, db, _ = built
    scores = query(db, "SELECT * FROM eval_scores WHERE experiment = 'alpha'")
    iterations = scores.groupby("method")["iteration"].first()
    assert pd.isna(iterations["no_finetune"]) and iterations["self_instruct"] == 0 and iterations["montessori"] == 2
    assert iterations["montessori_it1"] == 1
    alpaca = scores[(scores["benchmark"] == "alpaca_eval") & (scores["method"] == "montessori")].set_index("metric")
    assert alpaca.loc["lc_win_rate", "headline"] and not alpaca.loc["win_rate", "headline"]
    assert alpaca.loc["win_rate", "value"] == 60.0 and alpaca.loc["win_rate", "judge"] == "judge-model"
    assert (scores.groupby(["method", "benchmark"])["headline"].sum() == 1).all()
    assert set(scores["item_limit"]) == {3} and set(scores["source"]) == {"offline"}


def test_table1_has_the_paper_layout(built):
    _, db, _ = built
    table1 = query(db, "SELECT * FROM table1")
    assert list(table1.columns) == [
        "experiment", "method", "iteration", "alpaca_eval_subset", "alpaca_eval_lc_win_rate", "alpaca_eval_win_rate",
        "mt_bench", "arc_challenge", "gsm8k", "hellaswag", "gpqa", "mmlu",
    ]  # fmt: skip
    assert set(table1["alpaca_eval_subset"]) == {"heldout"}
    # The earlier teacher's student is the montessori row of iteration 1, as the paper's it1 beside it2.
    assert list(zip(table1["experiment"], table1["method"], table1["iteration"].fillna(-1))) == [
        ("alpha", "no_finetune", -1), ("alpha", "self_instruct", 0), ("alpha", "montessori", 1),
        ("alpha", "montessori", 2), ("beta", "no_finetune", -1), ("beta", "self_instruct", 0),
        ("beta", "montessori", 1),
    ]  # fmt: skip
    assert table1.iloc[2]["alpaca_eval_win_rate"] == 55.0
    alpha_montessori = table1.iloc[3]
    assert alpha_montessori["iteration"] == 2 and alpha_montessori["alpaca_eval_lc_win_rate"] == 61.0
    assert alpha_montessori["mt_bench"] == 60.0 and alpha_montessori["gpqa"] == 60.0
    beta_montessori = table1.iloc[6]
    assert beta_montessori["iteration"] == 1 and beta_montessori["gsm8k"] == 60.0
    assert math.isnan(beta_montessori["mmlu"])


def test_lineage_follows_final_examples_to_seeds_teacher_and_influence(built):
    _, db, _ = built
    lineage = query(db, "SELECT * FROM lineage WHERE experiment = 'alpha' ORDER BY method, candidate_id")
    assert len(lineage) == 6
    row = lineage[(lineage["method"] == "montessori") & (lineage["candidate_id"] == "final-q0-0")].iloc[0]
    assert row["teacher_iteration"] == 2 and row["prompt_id"] == "final-q0"
    assert list(row["seed_ids"]) == ["s0", "s2"] and list(row["seed_texts"]) == [SEEDS[0], SEEDS[2]]
    # Seed s0 was in prompt p1 of iterations 1 and 2: 3 scored candidates each, influences 0.5, -0.25, -0.125.
    assert row["teacher_pairs"] == 4 and row["evidence_candidates"] == 6 and row["evidence_positive"] == 2
    assert row["evidence_mean_influence"] == pytest.approx(0.125 / 3)
    unrelated = lineage[(lineage["method"] == "montessori") & (lineage["candidate_id"] == "final-q1-0")].iloc[0]
    assert unrelated["evidence_candidates"] == 0 and unrelated["teacher_pairs"] == 4
    self_instruct = lineage[lineage["method"] == "self_instruct"]
    assert (self_instruct["teacher_iteration"] == 0).all() and (self_instruct["teacher_pairs"] == 0).all()
    assert (self_instruct["evidence_candidates"] == 0).all()


def write_baselines(results: Path, experiment: str) -> None:
    """A finished run of the paper's baselines beside self_instruct, K = 2: strong_teacher's final set; the
    Self-Reward loop (iteration 1 judges teacher_0's iteration-1 candidates, iteration 2 its own); two LLM2LLM
    rounds that each add one example written from a failed one."""
    root = results / experiment
    (root / "pool").mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"experiment": experiment, "iterations": 2}))
    seeds = {"seed_id": [f"s{i}" for i in range(len(SEEDS))], "seed_text": SEEDS, "source": "seeds.json"}
    pd.DataFrame({**seeds, "source_index": range(len(SEEDS))}).to_parquet(root / "pool/seeds.parquet")

    def parquet(rows, relative):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(root / relative)

    loop = {1: ("iter1", "iter1"), 2: ("self_reward-iter2", "self_reward/iter2")}
    for iteration, (stage, folder) in loop.items():
        candidates = [_candidate(experiment, stage, iteration, "p1", k, ["s0", "s1"]) for k in range(2)]
        parquet(candidates, f"{folder}/candidates.parquet")
        rewards = [1.5, 3.25]
        parquet({"candidate_id": [c["candidate_id"] for c in candidates], "prompt_id": f"{stage}-p1",
                 "iteration": iteration, "reward": rewards, "score_probabilities": "{}", "judgment": "3",
                 "judge": "local-hf:teacher"}, f"self_reward/iter{iteration}/rewards.parquet")  # fmt: skip
        parquet({"pair_id": [f"sr{iteration}"], "prompt_id": f"{stage}-p1", "iteration": iteration,
                 "prompt": "prompt p1", "chosen": "raw 1", "rejected": "raw 0",
                 "chosen_candidate_id": f"{stage}-p1-1", "rejected_candidate_id": f"{stage}-p1-0",
                 "chosen_reward": 3.25, "rejected_reward": 1.5},
                f"self_reward/iter{iteration}/pairs.parquet")  # fmt: skip
    finals = {"self_instruct": 0, "strong_teacher": 0, "self_reward": 2}
    for method, teacher in finals.items():
        final = pd.DataFrame([_candidate(experiment, "final", teacher, "q0", 0, ["s0", "s2"]),
                              _candidate(experiment, "final", teacher, "q1", 0, ["s7"])])  # fmt: skip
        parquet(final, f"final/{method}/candidates.parquet")
        parquet(final[TRAIN_COLUMNS], f"final/{method}/train.parquet")
    train = pd.read_parquet(root / "final/self_instruct/train.parquet").assign(augmented_from=None)
    for iteration in (1, 2):
        parquet({"candidate_id": ["final-q0-0", "final-q1-0"], "prompt_id": ["final-q0", "final-q1"],
                 "iteration": iteration, "instruction": "i", "reference": "r", "answer": ["good", f"bad {iteration}"],
                 "answer_finish_reason": "stop", "judgment": "Correct", "p_correct": [0.9, 0.2],
                 "verdict": ["correct", "incorrect"], "failed": [False, True], "judge": "local-hf:teacher"},
                f"llm2llm/iter{iteration}/tests.parquet")  # fmt: skip
        new = _candidate(experiment, f"llm2llm-iter{iteration}", iteration, "p00000", 0, ["s7"])
        parquet([{**new, "augmented_from": "final-q1-0"}], f"llm2llm/iter{iteration}/candidates.parquet")
        train = pd.concat([train, pd.DataFrame([new])[TRAIN_COLUMNS].assign(augmented_from="final-q1-0")])
        parquet(train, f"final/{'llm2llm_it1' if iteration == 1 else 'llm2llm'}/train.parquet")
    for method in ("no_finetune", *finals, "llm2llm_it1", "llm2llm"):
        _eval(root / f"eval/{method}/alpaca_eval.json", "alpaca_eval", method, 50.0)


def test_baselines_follow_their_own_lineage(tmp_path):
    write_baselines(tmp_path / "results", "gamma")
    db = tmp_path / "results" / "montessori.duckdb"
    counts = build_database(tmp_path / "results", db, data_dir=tmp_path / "data")
    assert counts["rewards"] == 4 and counts["llm2llm_tests"] == 4
    table1 = query(db, "SELECT method, iteration FROM table1")
    assert list(zip(table1["method"], table1["iteration"].fillna(-1))) == [
        ("no_finetune", -1), ("self_instruct", 0), ("strong_teacher", 0), ("self_reward", 2), ("llm2llm", 1),
        ("llm2llm", 2),
    ]  # fmt: skip
    pairs = query(db, "SELECT method, iteration, chosen_reward, chosen_influence FROM pairs ORDER BY iteration")
    assert pairs["method"].tolist() == ["self_reward", "self_reward"] and pairs["chosen_influence"].isna().all()
    lineage = query(db, "SELECT * FROM lineage ORDER BY method, candidate_id").set_index(["method", "candidate_id"])
    # self_reward's teacher_2 learnt from both iterations' pairs; seed s0 was in both iterations' scored prompt.
    row = lineage.loc[("self_reward", "final-q0-0")]
    assert row["teacher_pairs"] == 2 and row["evidence_candidates"] == 4
    assert row["evidence_mean_reward"] == pytest.approx((1.5 + 3.25) / 2) and pd.isna(row["evidence_mean_influence"])
    assert lineage.loc[("strong_teacher", "final-q0-0"), "teacher_pairs"] == 0
    # LLM2LLM's set: self_instruct's two examples and one new example per round, each from the failed q1.
    grown = lineage.loc["llm2llm"]
    assert len(grown) == 4 and grown["augmented_from"].count() == 2
    new = grown.loc["llm2llm-iter2-p00000-0"]
    assert new["augmented_from"] == "final-q1-0" and new["failed_answer"] == "bad 2"
    assert new["teacher_iteration"] == 2 and list(new["seed_texts"]) == [SEEDS[7]]
    assert pd.isna(grown.loc["final-q1-0", "failed_answer"]) and grown.loc["final-q1-0", "n_generated_in_context"] == 0


def test_siblings_rank_candidates_of_one_prompt(built):
    _, db, _ = built
    siblings = query(db, "SELECT * FROM siblings WHERE experiment = 'beta'").set_index("candidate_id")
    assert len(siblings) == 6
    best = siblings.loc["iter1-p1-0"]
    assert best["influence_rank"] == 1 and best["n_siblings"] == 3 and best["n_pairs_chosen"] == 2
    assert list(best["sibling_influences"]) == [0.5, -0.25, -0.125]
    assert list(siblings.loc["iter1-p2-0", "sibling_influences"])[:2] == [0.25, 0.0625]
    assert siblings.loc["iter1-p1-1", "n_pairs_rejected"] == 1 and siblings.loc["iter1-p1-1", "influence_rank"] == 3
    rejected = siblings.loc["iter1-p2-2"]
    assert rejected["verdict"] == "too_long" and pd.isna(rejected["influence"]) and pd.isna(rejected["influence_rank"])


def test_costs_per_rule_and_per_candidate(built):
    _, db, _ = built
    costs = query(db, "SELECT * FROM costs WHERE experiment = 'alpha'").set_index("rule")
    assert set(costs.index) == {"influence_shard", "synthesize_final", "pool_seeds"}
    shards = costs.loc["influence_shard"]
    assert shards["n_jobs"] == 4 and shards["seconds"] == 40.0 and shards["max_rss_mb"] == 300.0
    assert shards["n_candidates"] == 10 and shards["seconds_per_candidate"] == 4.0
    assert pd.isna(costs.loc["pool_seeds", "seconds_per_candidate"])
    jobs = query(db, "SELECT * FROM jobs WHERE experiment = 'alpha' AND rule = 'influence_shard' ORDER BY wildcards")
    assert list(jobs["wildcards"]) == ["iter1-1-of-2", "iter1-2-of-2", "iter2-1-of-2", "iter2-2-of-2"]
    assert (jobs["cpu_seconds"] == 5.0).all()


def test_contamination_exact_and_ngram_overlap(built):
    _, db, _ = built
    everything = query(db, "SELECT * FROM contamination WHERE experiment = 'alpha'")
    table = everything[everything["scope"] == "benchmark"].set_index(["source", "benchmark"])
    assert len(table) == 2 * 7
    reference_alpaca = table.loc[("reference", "alpaca_eval")]
    assert reference_alpaca["exact"] == 1 and reference_alpaca["exact_fraction"] == 0.5
    seeds_mmlu = table.loc[("seeds", "mmlu")]
    assert seeds_mmlu["exact"] == 0 and seeds_mmlu["near_duplicate"] == 1 and seeds_mmlu["ngram"] == 8
    assert table["near_duplicate"].sum() == 2
    gpqa = table.loc[("seeds", "gpqa")]
    assert gpqa["n_prompts"] == 0 and "missing" in gpqa["note"]
    # What was evaluated: the held-out subset shares nothing with the reference set, all 805 does (item 0).
    evaluated = everything[everything["scope"] != "benchmark"].set_index(["source", "scope"])
    assert set(evaluated.index) == {
        (s, f"evaluated {subset}") for s in ("reference", "seeds") for subset in ("heldout", "all")
    }
    assert evaluated.loc[("reference", "evaluated heldout"), ["n_prompts", "exact", "near_duplicate"]].tolist() == [
        1,
        0,
        0,
    ]
    assert evaluated.loc[("reference", "evaluated all"), ["n_prompts", "exact", "exact_fraction"]].tolist() == [
        2,
        1,
        0.5,
    ]
    assert evaluated.loc[("seeds", "evaluated all"), "exact"] == 0


def test_building_twice_gives_identical_tables(built, tmp_path):
    root, db, _ = built
    again = tmp_path / "again.duckdb"
    build_database(root / "results", again, data_dir=root / "data")
    for table in [*TABLES, "table1", "lineage", "siblings", "costs", "contamination"]:
        first, second = (query(path, f"SELECT * FROM {table} ORDER BY ALL") for path in (db, again))
        pd.testing.assert_frame_equal(first, second, obj=table)
    assert not [p for p in again.parent.iterdir() if p.name.startswith(".")], "temporary database left behind"


def test_rebuild_replaces_the_database_in_place(tmp_path):
    write_experiment(tmp_path / "results", "gamma", iterations=1, with_config=True)
    db = tmp_path / "results" / "montessori.duckdb"
    build_database(tmp_path / "results", db, data_dir=tmp_path / "no-data")
    (tmp_path / "results/gamma/eval/montessori/gsm8k.json").unlink()
    build_database(tmp_path / "results", db, data_dir=tmp_path / "no-data")
    assert "gsm8k" not in set(query(db, "SELECT benchmark FROM eval_scores WHERE method = 'montessori'")["benchmark"])
    assert sorted(os.listdir(tmp_path / "results")) == ["gamma", "montessori.duckdb"]


def test_source_files_are_what_the_database_reads(built):
    root, _, _ = built
    files = [p.relative_to(root / "results").as_posix() for p in source_files(root / "results")]
    assert "alpha/config.yaml" in files and "beta/iter1/influence.parquet" in files
    assert "alpha/eval/montessori/mmlu.json" in files and "alpha/benchmarks/pool_seeds.tsv" in files
    assert not [f for f in files if "montessori.duckdb" in f or f.startswith("beta/config") or "outputs" in f]


def test_rule_inputs_track_what_the_dag_does_not_write(tmp_path, monkeypatch):
    write_experiment(tmp_path / "results", "alpha", iterations=2, with_config=True)
    write_experiment(tmp_path / "results", "beta", iterations=1, with_config=False)
    (tmp_path / "results/beta/benchmarks/plots.tsv").write_text(BENCHMARK_TSV_HEADER)
    monkeypatch.chdir(tmp_path)
    ours = ["results/alpha/config.yaml", "results/alpha/iter3/pairs.parquet"]
    inputs = rule_inputs("results", "alpha", ours, downstream_rules=("plots", "table1"))
    assert inputs == sorted(inputs) and set(ours) <= set(inputs)  # outputs the DAG will write are kept as named
    assert "results/alpha/eval/montessori/gsm8k.json" in inputs and "results/beta/iter1/pairs.parquet" in inputs
    assert "results/beta/benchmarks/pool_seeds.tsv" in inputs
    assert "results/alpha/benchmarks/pool_seeds.tsv" not in inputs and "results/alpha/iter1/pairs.parquet" not in inputs
    assert "results/beta/benchmarks/plots.tsv" not in inputs


def test_a_file_missing_a_column_is_named(tmp_path):
    write_experiment(tmp_path / "results", "delta", iterations=1, with_config=True)
    influence = tmp_path / "results/delta/iter1/influence.parquet"
    pd.read_parquet(influence).drop(columns=["shard"]).to_parquet(influence)
    with pytest.raises(DataError, match=r"delta/iter1/influence\.parquet: missing column\(s\) shard"):
        build_database(tmp_path / "results", tmp_path / "db.duckdb", data_dir=tmp_path)
    assert not (tmp_path / "db.duckdb").exists()


def test_a_malformed_eval_file_is_named(tmp_path):
    write_experiment(tmp_path / "results", "delta", iterations=1, with_config=True)
    bad = tmp_path / "results/delta/eval/montessori/mmlu.json"
    bad.write_text('{"scores": {"acc": 0.5}, "score": "high"}')
    with pytest.raises(DataError, match=r"mmlu\.json: score must be a number"):
        build_database(tmp_path / "results", tmp_path / "db.duckdb", data_dir=tmp_path)


def test_gpqa_is_read_in_memory_from_the_encrypted_archive():
    data = ROOT / "data"
    if not (data / "gpqa" / "gpqa_diamond.zip").exists():
        pytest.skip("data/gpqa is not vendored here")
    assert gpqa_password(data / "gpqa" / "SOURCE.txt")
    with zipfile.ZipFile(data / "gpqa" / "gpqa_diamond.zip") as z:
        assert all(info.flag_bits & 0x1 for info in z.infolist()), "GPQA must stay encrypted at rest"
    relative, load = BENCHMARK_PROMPTS["gpqa"]
    questions = load(data)
    assert relative == "gpqa/gpqa_diamond.zip" and len(questions) == 198 and all(q.strip() for q in questions)


def test_format_table_aligns_columns():
    text = format_table(["name", "value", "note"], [("a", 1.5, None), ("longer name", 12345, "multi\nline")])
    header, rule, first, second = text.splitlines()
    assert rule.replace("-", "").split() == []
    assert header.index("value") == first.index("1.5") - 2 == second.index("12345")  # numbers right-aligned
    assert header.index("note") == first.index("NULL") == second.index("multi\\nline")


def test_cli_query_table1_and_missing_database(built, capsys, tmp_path):
    _, db, _ = built
    sql = "SELECT experiment, count(*) AS n FROM seeds GROUP BY ALL ORDER BY ALL"
    assert main(["query", sql, "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["experiment", "n"] and lines[2].split() == ["alpha", "8"] and len(lines) == 4
    assert main(["table1", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "alpaca_eval_lc_win_rate" in out and out.count("montessori") == 3  # alpha it1, it2; beta it1
    settings = ["--set", "experiment=alpha", "--set", "method=montessori", "--set", "candidate_id=final-q0-0"]
    assert main(["query", str(ROOT / "queries" / "lineage_of_example.sql"), "--db", str(db), *settings]) == 0
    assert "final-q0-0" in capsys.readouterr().out
    assert main(["query", "SELECT * FROM nowhere", "--db", str(db)]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["table1", "--db", str(tmp_path / "absent.duckdb")]) == 1
    err = capsys.readouterr().err
    assert "absent.duckdb" in err and "snakemake" in err


def test_every_canned_query_runs(built, capsys):
    _, db, _ = built
    queries = sorted((ROOT / "queries").glob("*.sql"))
    assert len(queries) >= 6
    settings = ["--set", "experiment=alpha", "--set", "method=montessori", "--set", "candidate_id=final-q0-0"]
    for path in queries:
        if path.name == "views.sql":
            continue
        assert main(["query", str(path), "--db", str(db), *settings]) == 0, path.name
        assert len(capsys.readouterr().out.splitlines()) >= 3, path.name


def test_cli_entry_point_runs_as_a_module(built):
    _, db, _ = built
    command = [sys.executable, "-m", "montessori.cli", "table1", "--db", str(db)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and "self_instruct" in result.stdout, result.stderr
