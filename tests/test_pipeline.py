"""The Snakemake workflow itself: lint, dry runs, config errors, and one real end-to-end run (configs/test.yaml)."""

import json
import re
import signal
import subprocess
import time

import duckdb
import pandas as pd
import psutil
import pytest
import yaml

from montessori.pairs import pairable
from tests.conftest import ROOT, SNAKEMAKE, TEST_CONFIG, make_workdir, run_snakemake, shared_workdir


def snakemake(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The checkout's workflow in the session's shared working directory (tests.conftest.shared_workdir)."""
    return run_snakemake(shared_workdir(), *args, check=check)


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
    # Written by a local teacher: self_instruct, self_reward it1 and it2, montessori it1 and it2; by the API one.
    assert jobs["synthesize_final"] == 5 and jobs["synthesize_strong_teacher"] == 1
    assert jobs["sft_student"] == 8  # every method's student, llm2llm_it1's included
    assert "build_model" not in jobs  # hub ids: nothing to build


def test_paper_1b_config_dry_run():
    jobs = planned_jobs("--configfile", "configs/paper_1b.yaml", "--config", "experiment=dryrun-paper-1b")
    assert jobs["influence_shard"] == 2 * 16 and jobs["dpo_teacher"] == 2 and jobs["dpo_self_reward_teacher"] == 2
    assert jobs["synthesize_final"] == 5 and jobs["sft_student"] == 8
    assert jobs["lm_eval"] == 9 * 5 and jobs["mt_bench"] == 9  # 9 students x every benchmark
    assert "build_model" not in jobs  # hub ids: nothing to build


BASELINES = (
    "final={methods: [self_instruct, strong_teacher, self_reward, llm2llm, montessori]}",
    "models={strong_teacher: {base_url: 'http://127.0.0.1:9/v1', model: gpt-4o}}",
)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        # Iteration 1 judges Montessori's iteration-1 candidates (teacher_0's): no second synthesis of them, and no
        # influence anywhere in this loop.
        ("self_reward", {"synthesize_iteration": 1, "self_reward_judge": 2, "self_reward_pairs": 2,
                         "dpo_self_reward_teacher": 2, "synthesize_self_reward_iteration": 1, "synthesize_final": 1}),
        # self_instruct's set and student, two rounds of tests and new examples, llm2llm_it1's student for round 2.
        ("llm2llm", {"synthesize_final": 1, "sft_student": 2, "llm2llm_test": 2, "llm2llm_augment": 2,
                     "llm2llm_train_set": 2}),
        ("strong_teacher", {"synthesize_strong_teacher": 1}),
    ],
)  # fmt: skip
def test_each_baselines_part_of_the_dag(method, expected):
    target = f"results/dryrun-baselines/final/{method}/train.parquet"
    jobs = planned_jobs("--config", "experiment=dryrun-baselines", *BASELINES, targets=(target,))
    assert {rule: n for rule, n in jobs.items() if rule not in ("build_model", "pool_seeds")} == expected


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


METHODS = ("no_finetune", "self_instruct", "strong_teacher", "self_reward", "llm2llm", "montessori")


@pytest.mark.e2e
def test_end_to_end_on_the_test_config(test_config_run, tmp_path):
    """Real SmolLM2 teacher and student through every stage of every method; then nothing reruns; then changes
    rerun exactly what they concern."""
    workdir, results = test_config_run

    seeds = pd.read_parquet(results / "pool/seeds.parquet")
    candidates = pd.read_parquet(results / "iter1/candidates.parquet")
    influence = pd.read_parquet(results / "iter1/influence.parquet")
    pairs = pd.read_parquet(results / "iter1/pairs.parquet")
    # Influence is measured for the candidates a pair can use: usable ones on prompts with two or more.
    assert set(influence["candidate_id"]) == set(pairable(candidates)["candidate_id"])
    assert pairable(candidates)["prompt_id"].nunique() >= 4  # influence.n_prompts (a round may give more)
    assert len(pairs) > 0 and (pairs["chosen_influence"] > 0).all() and (pairs["rejected_influence"] < 0).all()
    assert set(pairs["chosen_candidate_id"]) <= set(candidates["candidate_id"])
    # configs/test.yaml: first_order, one candidate of each shard checked against the exact engine.
    assert (influence["mode"] == "first_order").all()
    assert (influence.groupby("shard")["influence_exact"].count() == 1).all()
    assert influence["validation_sign_agreement"].between(0, 1).all()
    assert set(candidates.explode("seed_ids")["seed_ids"].dropna()) <= set(seeds["seed_id"])
    for loop in ("iter1", "self_reward/iter1"):
        assert (results / f"{loop}/teacher/config.json").exists()
    # Self-Reward judged the same candidates influence scored, and paired the best against the worst of a prompt.
    rewards = pd.read_parquet(results / "self_reward/iter1/rewards.parquet")
    assert set(rewards["candidate_id"]) == set(influence["candidate_id"]) and rewards["reward"].between(0, 5).all()
    self_reward_pairs = pd.read_parquet(results / "self_reward/iter1/pairs.parquet")
    assert (
        len(self_reward_pairs) > 0 and (self_reward_pairs["chosen_reward"] > self_reward_pairs["rejected_reward"]).all()
    )
    # LLM2LLM tested self_instruct's student on self_instruct's set and wrote one example from each failure.
    tests = pd.read_parquet(results / "llm2llm/iter1/tests.parquet")
    self_instruct = pd.read_parquet(results / "final/self_instruct/train.parquet")
    assert list(tests["candidate_id"]) == list(self_instruct["candidate_id"]) and tests["failed"].any()
    written = pd.read_parquet(results / "llm2llm/iter1/candidates.parquet")
    assert set(written["augmented_from"]) == set(tests.loc[tests["failed"], "candidate_id"])
    # One new example per failure that got a usable sample (the first one); SmolLM2 seldom writes one (this config
    # measured 1 of 2 failures helped, after 184 samples in all), but the lineage below needs one.
    helped = written.loc[written["verdict"] == "ok", "augmented_from"].nunique()
    assert helped >= 1
    grown = pd.read_parquet(results / "final/llm2llm/train.parquet")
    assert len(grown) == len(self_instruct) + helped and grown["augmented_from"].count() == helped
    # The strong teacher wrote through the server, and every completion it paid for is in the request cache.
    strong = pd.read_parquet(results / "final/strong_teacher/candidates.parquet")
    assert strong["teacher"].str.startswith("smollm2-135m-instruct@http://127.0.0.1:").all()
    cached = "".join(path.read_text() for path in (workdir / "results/teacher_cache").iterdir())
    assert cached.count('"key"') >= len(strong) + (strong["verdict"] == "ok").sum()
    for method in METHODS[1:]:
        train = pd.read_parquet(results / f"final/{method}/train.parquet")
        assert len(train) >= 2 and train["response"].str.len().gt(0).all()
    for method in ("self_reward", "montessori"):
        assert pd.read_parquet(results / f"final/{method}/train.parquet")["iteration"].eq(1).all()
    for method in METHODS:
        for benchmark in ("alpaca_eval", "arc_challenge"):
            record = json.loads((results / f"eval/{method}/{benchmark}.json").read_text())
            assert (record["method"], record["benchmark"]) == (method, benchmark)
            assert record["n_items"] >= 1 and record["source"] == "offline"
    # The Self-Instruct student against itself: ties by definition, decided without the judge.
    assert json.loads((results / "eval/self_instruct/alpaca_eval.json").read_text())["scores"]["win_rate"] == 50.0
    con = duckdb.connect(str(workdir / "results/montessori.duckdb"), read_only=True)
    table1 = con.execute("SELECT method, iteration FROM table1 WHERE experiment = 'test'").fetchall()
    assert table1 == [("no_finetune", None), ("self_instruct", 0), ("strong_teacher", 0), ("self_reward", 1),
                      ("llm2llm", 1), ("montessori", 1)]  # fmt: skip
    # Each example's lineage: the pairs that trained its teacher; LLM2LLM's new examples, the failure behind each.
    lineage = con.execute(
        "SELECT method, min(teacher_pairs), count(augmented_from), count(failed_answer) FROM lineage "
        "WHERE experiment = 'test' GROUP BY method ORDER BY method"
    ).fetchall()
    by_method = {method: rest for method, *rest in lineage}
    assert by_method["montessori"][0] == len(pairs) and by_method["self_reward"][0] == len(self_reward_pairs)
    assert by_method["self_instruct"] == [0, 0, 0] and by_method["strong_teacher"] == [0, 0, 0]
    assert by_method["llm2llm"][1] == by_method["llm2llm"][2] == helped
    # No held-out AlpacaEval item is a reference instruction.
    overlap = con.execute(
        "SELECT exact FROM contamination WHERE experiment = 'test' AND source = 'reference' "
        "AND scope = 'evaluated heldout'"
    ).fetchall()
    assert overlap == [(0,)]
    con.close()

    assert planned_jobs("--configfile", *TEST_CONFIG) == {}

    def jobs_after(change) -> dict[str, int]:
        """The jobs a dry run plans after `change(config)` to a copy of configs/test.yaml."""
        changed = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
        change(changed)
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump(changed, sort_keys=False))  # params compare in key order
        return planned_jobs("--configfile", str(path), TEST_CONFIG[1])

    report = {"snapshot_config": 1, "aggregate": 1, "plots": 1, "table1": 1, "all": 1}

    def evaluated(n):
        return {"sft_student": n, "alpaca_eval_outputs": n, "alpaca_eval": n, "lm_eval": n}

    # Whose final teacher DPO trained: montessori's and self_reward's (nothing of self_instruct, strong_teacher or
    # llm2llm, whose sets teacher_0 and the API write).
    assert jobs_after(lambda c: c["dpo"].update(beta=0.2)) == {
        "dpo_teacher": 1, "dpo_self_reward_teacher": 1, "synthesize_final": 2, **evaluated(2), **report,
    }  # fmt: skip
    # The influence mode changes every score, so it reruns influence and everything downstream of it, and nothing
    # upstream (pool, warm-up, synthesis) or beside it (the baselines).
    assert jobs_after(lambda c: c["influence"].update(mode="exact")) == {
        "influence_shard": 2, "gather_influence": 1, "pairs": 1, "dpo_teacher": 1, "synthesize_final": 1,
        **evaluated(1), **report,
    }  # fmt: skip
    # A stricter LLM2LLM grader reruns its round and what it feeds.
    assert jobs_after(lambda c: c["llm2llm"].update(pass_threshold=0.995)) == {
        "llm2llm_test": 1, "llm2llm_augment": 1, "llm2llm_train_set": 1, **evaluated(1), **report,
    }  # fmt: skip
    # Evaluation jobs hold only the config keys they read: one benchmark's limit reruns that benchmark only.
    assert jobs_after(lambda c: c["eval"]["limit"].update(arc_challenge=3)) == {"lm_eval": 6, **report}
    # Another strong teacher reruns its set only (the key's variable is part of the endpoint's settings).
    assert jobs_after(lambda c: c["models"]["strong_teacher"].update(api_key_env="OTHER_KEY")) == {
        "synthesize_strong_teacher": 1, **evaluated(1), **report,
    }  # fmt: skip


# Long jobs survive a kill (montessori/progress.py): SIGKILL a synthesis job and an influence shard of the test
# config's run part way, rerun, and compare with what the uninterrupted run wrote. After the end-to-end test: the
# forced reruns leave newer files behind, so everything downstream is outdated afterwards.


def kill_part_way(workdir, target: str, rule: str, script: str, progress, steps: int) -> None:
    """Force `rule` to rerun `target` and SIGKILL the job's process once its progress file holds `steps` steps, as
    a preempted or timed-out cluster job dies; Snakemake then fails the job and removes its output."""
    printed = open(workdir / f"killed-{rule}.log", "w+")  # noqa: SIM115 (read back below)
    run = subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", *TEST_CONFIG, "--cores", "2",
         "--forcerun", rule, "--", target],
        cwd=workdir, stdout=printed, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 900
    try:
        while not (progress.exists() and len(progress.read_text().splitlines()) >= 1 + steps):
            assert run.poll() is None, f"{rule} finished before it saved {steps} step(s)"
            assert time.monotonic() < deadline, f"{rule} saved no progress in 15 min"
            time.sleep(0.05)
        (job,) = [p for p in psutil.Process(run.pid).children(recursive=True) if script in " ".join(p.cmdline())]
        job.send_signal(signal.SIGKILL)
        run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        printed.seek(0)
        output = printed.read()
        printed.close()
    assert run.returncode != 0, output
    assert not (workdir / target).exists(), "Snakemake keeps the output of a killed job"


# Synthesis jobs of the test config: rule, wildcards, target, and the stage its round lines name.
SYNTHESIS_JOBS = [
    ("synthesize_final", "self_instruct", "final/self_instruct/candidates.parquet", "final"),
    ("synthesize_warmup", None, "warmup/candidates.parquet", "warmup"),
    ("synthesize_iteration", "iter1", "iter1/candidates.parquet", "iter1"),
]


@pytest.mark.e2e
def test_a_killed_synthesis_replays_its_saved_rounds_and_writes_what_an_uninterrupted_run_wrote(test_config_run):
    workdir, results = test_config_run

    def log_of(rule, wildcards):
        return results / "logs" / (f"{rule}/{wildcards}.log" if wildcards else f"{rule}.log")

    def rounds(log, stage):
        return log.count(f"INFO montessori.synthesize: {stage}: ")

    # A job the uninterrupted run asked the teacher in two rounds or more, so that one can be cut short.
    rule, wildcards, relative, stage = next(
        job for job in SYNTHESIS_JOBS if rounds(log_of(job[0], job[1]).read_text(), job[3]) >= 2
    )
    target = f"results/test/{relative}"
    uninterrupted = pd.read_parquet(workdir / target)
    first_rounds = rounds(log_of(rule, wildcards).read_text(), stage)
    progress = results / "progress" / (f"{rule}/{wildcards}.jsonl" if wildcards else f"{rule}.jsonl")
    kill_part_way(workdir, target, rule, ".synthesize.py", progress, steps=1)
    saved_rows = len(json.loads(progress.read_text().splitlines()[1]))

    run_snakemake(workdir, "--configfile", *TEST_CONFIG, "--cores", "2", "--", target)
    pd.testing.assert_frame_equal(pd.read_parquet(workdir / target), uninterrupted)
    log = log_of(rule, wildcards).read_text()
    assert "resuming after 1 saved step(s)" in log
    # The teacher was asked only for the rounds after the saved one: one round fewer than uninterrupted.
    assert rounds(log, stage) == first_rounds - 1
    assert 0 < saved_rows < len(uninterrupted)
    assert not progress.exists()  # a finished job removes its progress


@pytest.mark.e2e
def test_a_killed_influence_shard_scores_only_the_candidates_it_had_not_saved(test_config_run):
    workdir, results = test_config_run
    target = "results/test/iter1/influence/1-of-2.parquet"
    uninterrupted = pd.read_parquet(workdir / target)
    progress = results / "progress/influence_shard/iter1-1-of-2.jsonl"
    kill_part_way(workdir, target, "influence_shard", ".influence_shard.py", progress, steps=1)
    saved = json.loads(progress.read_text().splitlines()[1])

    run_snakemake(workdir, "--configfile", *TEST_CONFIG, "--cores", "2", "--", target)
    pd.testing.assert_frame_equal(pd.read_parquet(workdir / target), uninterrupted)
    log = (results / "logs/influence_shard/iter1-1-of-2.log").read_text()
    assert "resuming after 1 saved step(s)" in log
    assert f"'resumed': {len(saved)}," in log and len(saved) < len(uninterrupted)
    assert not progress.exists()


def test_a_benchmarks_own_judge_reruns_only_that_benchmark(tmp_path):
    """On finished outputs (empty stand-ins marked done by --touch, so Snakemake records their params), a change
    to eval.mt_bench.judge reruns the MT-Bench jobs only, one to eval.judge both judged benchmarks."""
    workdir = make_workdir(tmp_path)

    def run(*args: str) -> str:
        return run_snakemake(workdir, *args).stdout

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

    def jobs_after(change: dict, top: str = "eval") -> dict[str, int]:
        changed = yaml.safe_load((ROOT / "config.yaml").read_text())
        for section, value in change.items():
            changed.setdefault(top, {}).setdefault(section, {}).update(value)
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
    # The judge's chat format renders the judged prompts only: the students and their answers stay.
    assert jobs_after({"chat_template": {"judge": "chatml"}}, top="models") == {
        "alpaca_eval": 3, "mt_bench": 3, **report
    }  # fmt: skip
