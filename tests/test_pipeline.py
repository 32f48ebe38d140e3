"""The Snakemake workflow itself: lint, dry runs, config errors, and one real end-to-end run (configs/test.yaml)."""

import json
import re
import shutil
import subprocess
import sys

import duckdb
import pandas as pd
import pytest
import yaml

from montessori.pairs import pairable
from tests.conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--directory", str(ROOT), "--snakefile", str(ROOT / "Snakefile")]


def snakemake(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, *args], capture_output=True, text=True, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(*args: str, targets: tuple[str, ...] = ()) -> dict[str, int]:
    """Rule -> job count of a dry run (of `targets`, else of rule all)."""
    out = snakemake(*targets, "-n", "--quiet", "rules", *args).stdout
    jobs = {}
    for line in out.split("Job stats:")[-1].splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs


def test_lint_is_clean():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_of_default_config_schedules_the_whole_loop():
    jobs = planned_jobs("--config", "experiment=dryrun-default")
    assert jobs["synthesize_iteration"] == 2 and jobs["dpo_teacher"] == 2
    assert jobs["influence_shard"] == 2 * 1  # 2 iterations x 1 shard (config.yaml)
    assert jobs["synthesize_final"] == 2  # self_instruct and montessori


def test_an_earlier_teacher_writes_its_own_final_set():
    methods = ["final={methods: [self_instruct, montessori_it1, montessori]}",
               "eval={methods: [no_finetune, self_instruct, montessori_it1, montessori]}"]  # fmt: skip
    jobs = planned_jobs("--config", "experiment=dryrun-it1", *methods)
    assert jobs["synthesize_final"] == 3 and jobs["sft_student"] == 3
    # teacher_1's final set needs iteration 1 only: no second synthesis, influence or DPO.
    target = "results/dryrun-it1/final/montessori_it1/train.parquet"
    jobs = planned_jobs("--config", "experiment=dryrun-it1", *methods, targets=(target,))
    assert jobs["synthesize_iteration"] == 1 and jobs["dpo_teacher"] == 1 and jobs["synthesize_final"] == 1


def test_paper_config_dry_run():
    jobs = planned_jobs("--configfile", "configs/paper.yaml", "--config", "experiment=dryrun-paper")
    assert jobs["influence_shard"] == 2 * 16
    assert jobs["synthesize_final"] == 3 and jobs["sft_student"] == 3  # self_instruct, it1, it2
    assert "build_model" not in jobs  # hub ids: nothing to build


def test_paper_1b_config_dry_run():
    jobs = planned_jobs("--configfile", "configs/paper_1b.yaml", "--config", "experiment=dryrun-paper-1b")
    assert jobs["influence_shard"] == 2 * 16 and jobs["dpo_teacher"] == 2
    assert jobs["synthesize_final"] == 3 and jobs["sft_student"] == 3  # self_instruct, it1, it2
    assert jobs["lm_eval"] == 4 * 5 and jobs["mt_bench"] == 4  # 4 students x every benchmark
    assert "build_model" not in jobs  # hub ids: nothing to build


@pytest.mark.parametrize("configfile", ["configs/paper.yaml", "configs/paper_1b.yaml"])
def test_paper_configs_plan_with_the_slurm_profile(configfile):
    """The cluster profile plans both paper settings. It deploys software with conda, whose envs a dry run resolves
    with a conda binary this machine lacks; `--sdm env-modules` replaces that method (no rule declares modules, so
    nothing else changes): on a cluster with conda, drop it."""
    experiment = "dryrun-slurm-" + configfile.split("/")[-1].removesuffix(".yaml")
    args = ("--profile", "profiles/slurm", "--sdm", "env-modules", "--configfile", configfile)
    out = snakemake("-n", *args, "--config", f"experiment={experiment}").stdout
    shards = [block for block in out.split("\nrule ") if block.startswith("influence_shard:")]
    assert len(shards) == 2 * 16
    # Each shard's GPUs come from the config's `gpus` (tests/test_job_resources.py checks every rule's count).
    assert all("slurm_partition=gpu" in block and "gpu=" in block for block in shards)
    assert "This was a dry-run" in out


def test_a_config_file_replaces_the_embedded_default(tmp_path):
    """Keys a --configfile leaves out take the schema's defaults (the paper's), not config.yaml's laptop sizes."""
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("experiment: dryrun-minimal\n")
    jobs = planned_jobs("--configfile", str(minimal))
    assert jobs["influence_shard"] == 2 * 8  # the schema's influence.shards, not config.yaml's 1


def test_set_scatter_changes_the_number_of_shards():
    jobs = planned_jobs("--config", "experiment=dryrun-scatter", "--set-scatter", "influence=5")
    assert jobs["influence_shard"] == 2 * 5


def test_building_the_dag_imports_no_heavy_library():
    """torch, transformers, vLLM and duckdb cost seconds to import; `snakemake -n` needs none of them."""
    from benchmarks.dag_time import heavy_imports

    assert heavy_imports(["--config", "experiment=dryrun-imports"]) == []


def test_unknown_config_key_fails_before_any_job():
    result = snakemake("-n", "--config", "bogus=1", check=False)
    assert result.returncode != 0
    assert "unknown config key 'bogus'" in result.stdout + result.stderr


def test_a_base_student_needs_an_explicit_chat_format_before_any_job():
    base = "models={student: tiny-random-llama-base}"
    result = snakemake("-n", "--config", base, check=False)
    assert result.returncode != 0
    assert "'models.chat_template.student' is 'auto', but resources/models/tiny-random-llama-base has no chat" in (
        result.stdout + result.stderr
    )
    snakemake("-n", "--config", "models={student: tiny-random-llama-base, chat_template: {student: plain}}")


def test_bad_enum_names_allowed_values():
    result = snakemake("-n", "--config", "influence={baseline: after}", check=False)
    assert result.returncode != 0
    assert "'before_step', 'null_step'" in result.stdout + result.stderr


@pytest.mark.e2e
def test_end_to_end_on_the_test_config(tmp_path):
    """Real SmolLM2 teacher and student through every stage; then nothing reruns; then a DPO change."""
    results = ROOT / "results" / "test"
    shutil.rmtree(results, ignore_errors=True)
    snakemake("--configfile", "configs/test.yaml", "--cores", "2")

    seeds = pd.read_parquet(results / "pool/seeds.parquet")
    for iteration in (1, 2):
        candidates = pd.read_parquet(results / f"iter{iteration}/candidates.parquet")
        influence = pd.read_parquet(results / f"iter{iteration}/influence.parquet")
        pairs = pd.read_parquet(results / f"iter{iteration}/pairs.parquet")
        # Influence is measured for the candidates a pair can use: usable ones on prompts with two or more.
        assert set(influence["candidate_id"]) == set(pairable(candidates)["candidate_id"])
        assert pairable(candidates)["prompt_id"].nunique() == 4  # influence.n_prompts
        assert len(pairs) > 0 and (pairs["chosen_influence"] > 0).all() and (pairs["rejected_influence"] < 0).all()
        assert set(pairs["chosen_candidate_id"]) <= set(candidates["candidate_id"])
        # configs/test.yaml: first_order, 3 candidates of each shard checked against the exact engine.
        assert (influence["mode"] == "first_order").all()
        assert influence.groupby("shard")["influence_exact"].count().between(1, 3).all()
        assert influence["validation_sign_agreement"].between(0, 1).all()
        assert set(candidates.explode("seed_ids")["seed_ids"].dropna()) <= set(seeds["seed_id"])
        assert (results / f"iter{iteration}/teacher/config.json").exists()
    for method in ("self_instruct", "montessori"):
        train = pd.read_parquet(results / f"final/{method}/train.parquet")
        assert len(train) > 0 and train["response"].str.len().gt(0).all()
    assert pd.read_parquet(results / "final/montessori/train.parquet")["iteration"].eq(2).all()
    for method in ("no_finetune", "self_instruct", "montessori"):
        for benchmark in ("alpaca_eval", "mt_bench", "arc_challenge"):
            record = json.loads((results / f"eval/{method}/{benchmark}.json").read_text())
            assert (record["method"], record["benchmark"]) == (method, benchmark)
            assert record["n_items"] >= 1 and record["source"] == "offline"
    # The Self-Instruct student against itself: ties by definition, decided without the judge.
    assert json.loads((results / "eval/self_instruct/alpaca_eval.json").read_text())["scores"]["win_rate"] == 50.0
    table1 = (
        duckdb.connect(str(ROOT / "results/montessori.duckdb"), read_only=True)
        .execute("SELECT method FROM table1 WHERE experiment = 'test' ORDER BY method")
        .fetchall()
    )
    assert [m for (m,) in table1] == ["montessori", "no_finetune", "self_instruct"]

    assert planned_jobs("--configfile", "configs/test.yaml") == {}

    changed = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
    changed["dpo"]["beta"] = 0.2
    changed_path = tmp_path / "beta.yaml"
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))  # params compare in key order
    jobs = planned_jobs("--configfile", str(changed_path))
    assert jobs == {
        "dpo_teacher": 2,
        "synthesize_iteration": 1,  # iteration 2 is written by teacher_1
        "influence_shard": 2,
        "gather_influence": 1,
        "pairs": 1,
        "synthesize_final": 1,  # montessori only: self_instruct's teacher is untouched
        "snapshot_config": 1,
        "sft_student": 1,
        "alpaca_eval_outputs": 1,
        "alpaca_eval": 1,  # montessori only: the self_instruct reference answers are unchanged
        "lm_eval": 1,
        "mt_bench": 1,
        "aggregate": 1,
        "plots": 1,
        "table1": 1,
        "all": 1,
    }

    # The influence mode changes every score, so it reruns influence and everything downstream of it (both
    # iterations), and nothing upstream: no pool, warm-up or iteration-1 synthesis.
    changed = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
    changed["influence"]["mode"] = "exact"
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert planned_jobs("--configfile", str(changed_path)) == {
        "influence_shard": 4,
        "gather_influence": 2,
        "pairs": 2,
        "dpo_teacher": 2,
        "synthesize_iteration": 1,  # iteration 2 is written by teacher_1
        "synthesize_final": 1,  # montessori only
        "snapshot_config": 1,
        "sft_student": 1,
        "alpaca_eval_outputs": 1,
        "alpaca_eval": 1,
        "lm_eval": 1,
        "mt_bench": 1,
        "aggregate": 1,
        "plots": 1,
        "table1": 1,
        "all": 1,
    }

    # Evaluation jobs hold only the config keys they read: one benchmark's limit reruns that benchmark only, and
    # a new method (teacher_1's student) adds its own jobs without touching the others.
    report = {"snapshot_config": 1, "aggregate": 1, "plots": 1, "table1": 1, "all": 1}
    changed = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
    changed["eval"]["limit"]["arc_challenge"] = 3
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert planned_jobs("--configfile", str(changed_path)) == {"lm_eval": 3, **report}
    changed = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
    changed["final"]["methods"] = ["self_instruct", "montessori_it1", "montessori"]
    changed["eval"]["methods"] = ["no_finetune", "self_instruct", "montessori_it1", "montessori"]
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert planned_jobs("--configfile", str(changed_path)) == {
        "synthesize_final": 1, "sft_student": 1, "alpaca_eval_outputs": 1, "alpaca_eval": 1, "lm_eval": 1,
        "mt_bench": 1, **report,
    }  # fmt: skip


def test_a_benchmarks_own_judge_reruns_only_that_benchmark(tmp_path):
    """On finished outputs (empty stand-ins marked done by --touch, so Snakemake records their params), a change
    to eval.mt_bench.judge reruns the MT-Bench jobs only, one to eval.judge both judged benchmarks."""
    for name in ("data", "resources", "config.yaml"):
        (tmp_path / name).symlink_to(ROOT / name)
    workdir = [*SNAKEMAKE[:3], "--directory", str(tmp_path), *SNAKEMAKE[5:]]

    def run(*args: str) -> str:
        result = subprocess.run([*workdir, *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    for line in run("-n").splitlines():
        if line.startswith("    output: "):
            for output in line.removeprefix("    output: ").split(", "):
                path = tmp_path / output
                if path.is_relative_to(tmp_path / "resources"):
                    continue  # the checkout's built models, shared through the symlink: never touched
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                else:
                    path.mkdir(parents=True, exist_ok=True)
    # Only the judged rules, the config snapshot and what follows them are forced: no shared model is touched.
    run("--touch", "--cores", "1", "--forcerun", "alpaca_eval", "mt_bench", "snapshot_config", "--quiet")
    assert "Nothing to be done" in run("-n")

    def jobs_after(change: dict) -> dict[str, int]:
        changed = yaml.safe_load((ROOT / "config.yaml").read_text())
        for section, value in change.items():
            changed["eval"].setdefault(section, {}).update(value)
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        out = run("-n", "--quiet", "rules", "--configfile", str(path))
        return {
            m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m.group(1) != "total"
        }

    report = {"snapshot_config": 1, "aggregate": 1, "plots": 1, "table1": 1, "all": 1}
    assert jobs_after({"mt_bench": {"judge": {"max_tokens": 64}}}) == {"mt_bench": 3, **report}
    assert jobs_after({"alpaca_eval": {"judge": {"temperature": 0.5}}}) == {"alpaca_eval": 3, **report}
    assert jobs_after({"judge": {"concurrency": 2}}) == {"alpaca_eval": 3, "mt_bench": 3, **report}
