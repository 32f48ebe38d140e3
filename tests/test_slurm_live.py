"""A live Slurm: the one-node Slurm of tests/slurm/local_slurm.sh runs configs/slurm_test.yaml's influence slice
through profiles/slurm (the profile check_profile.derive_profile derives from it), one running influence shard is
cancelled with scancel until the profile's retries are spent, and the rerun redoes that shard and the gather only.

local_slurm.sh installs Slurm with apt-get when it is missing and needs root. Where it cannot start one, the test
is skipped with the script's error in the reason, a banner on the terminal and a warning in pytest's summary.

The slice: reference_set and gather_influence are localrules (they run in Snakemake's own process), the
warm-up and three influence shards are sbatch jobs. The teacher's candidates and the seed pool are stand-ins
written by the test (the tiny random teacher writes no usable instruction; synthesis through Slurm is make
slurm-check's part). Everything lives in a temporary directory (results/, .snakemake/, the
Slurm logs); only the tiny model is shared, through a symlink to the checkout's resources/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from montessori.synthesize import COLUMNS
from tests.conftest import ROOT, TOY_EXAMPLES, make_workdir
from tests.slurm import check_profile

CONFIG = ROOT / "configs/slurm_test.yaml"
PROFILE = ROOT / "profiles/slurm/config.yaml"
EXPERIMENT = yaml.safe_load(CONFIG.read_text())["experiment"]
SHARDS = yaml.safe_load(CONFIG.read_text())["influence"]["shards"]
TARGET = f"results/{EXPERIMENT}/iter1/influence.parquet"
SHARD_OUTPUT = f"results/{EXPERIMENT}/iter1/influence/{{}}-of-{SHARDS}.parquet"


def loud_skip(config: pytest.Config, reason: str) -> None:
    """Skip, but never silently: a banner on the terminal now, a warning in the summary, the reason with -rs."""
    line = "!" * 100
    banner = f"\n{line}\n!! LIVE SLURM TEST SKIPPED (tests/test_slurm_live.py): {reason}\n{line}\n"
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            sys.stderr.write(banner)
            sys.stderr.flush()
    else:
        sys.stderr.write(banner)
    warnings.warn(f"live Slurm test skipped: {reason}", stacklevel=2)
    pytest.skip(f"no live Slurm: {reason}")


@pytest.fixture(scope="module")
def slurm(pytestconfig) -> float:
    """A running one-node Slurm (installed and started by local_slurm.sh when needed); the seconds it took."""
    start = time.monotonic()
    script = ROOT / "tests/slurm/local_slurm.sh"
    try:
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-2000:]
        loud_skip(pytestconfig, f"{script.name} did not finish in 900 s; its stderr ends:\n{tail!r}")
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        loud_skip(pytestconfig, f"{script.name} exited with {result.returncode}; its output ends:\n{tail}")
    if problem := check_profile.slurm_problem():
        loud_skip(pytestconfig, f"{script.name} ran, but {problem}")
    elapsed = time.monotonic() - start
    print(f"[slurm-live] local_slurm.sh: {elapsed:.1f} s\n{result.stdout}")
    return elapsed


def candidates(stage: str, iteration: int, instructions: list[str], responses: list[str], per_prompt: int):
    """A synthesis output of usable candidates (every column of montessori.synthesize.COLUMNS)."""
    n = len(instructions)
    rows = {
        "candidate_id": [f"{stage}-c{i:02d}" for i in range(n)],
        "prompt_id": [f"{stage}-p{i // per_prompt}" for i in range(n)],
        "stage": stage,
        "iteration": iteration,
        "teacher": "tiny-random-llama",
        "seed_ids": [[f"s{i}"] for i in range(n)],
        "n_generated_in_context": 0,
        "prompt": [f"prompt {i // per_prompt}" for i in range(n)],
        "raw_output": [f"<instruction>{text}</instruction>" for text in instructions],
        "output_finish_reason": "stop",
        "instruction": instructions,
        "response": responses,
        "response_finish_reason": "stop",
        "prompt_tokens": 10,
        "output_tokens": 10,
        "response_tokens": 5,
        "verdict": "ok",
        "rouge_l": 0.0,
        "rouge_l_match": "",
        "rouge_l_source": "",
    }
    return pd.DataFrame(rows)[COLUMNS]


def write_stand_ins(results: Path) -> list[str]:
    """The seed pool and the warm-up's and iteration 1's candidates, as the slice's inputs; their paths."""
    files = {
        results / "pool/seeds.parquet": pd.DataFrame(
            {"seed_id": ["s0"], "seed_text": ["Name a colour."], "source": ["stand-in"], "source_index": [0]}
        ),
        results / "warmup/candidates.parquet": candidates(
            "warmup", 0, list(TOY_EXAMPLES["instruction"][:4]), list(TOY_EXAMPLES["response"][:4]), 1
        ),
        # 6 prompts x 2 candidates: 4 pairable candidates in each of the 3 shards.
        results / "iter1/candidates.parquet": candidates(
            "iter1",
            1,
            [*TOY_EXAMPLES["instruction"], "Name a tree.", "Name a bird.", "Name a river.", "Name a metal."],
            [*TOY_EXAMPLES["response"], "An oak.", "A robin.", "The Nile.", "Iron."],
            2,
        ),
    }
    for path, frame in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    return [str(path.relative_to(results.parent.parent)) for path in files]


def workdir_jobs(workdir: Path) -> list[dict[str, str]]:
    """This test's Slurm jobs (by working directory): id, state and comment (the plugin's rule_NAME_wildcards_)."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k|%Z"], capture_output=True, text=True).stdout
    jobs = []
    for line in out.splitlines():
        slurm_id, state, comment, job_dir = (line.split("|") + ["", "", "", ""])[:4]
        if Path(job_dir) == workdir:
            jobs.append({"id": slurm_id, "state": state, "comment": comment})
    return jobs


class ShardCanceller(threading.Thread):
    """Cancels the first influence shard seen RUNNING, then each resubmission of it as soon as that runs."""

    def __init__(self, workdir: Path, times: int):
        super().__init__(daemon=True)
        self.workdir, self.times = workdir, times
        self.comment: str | None = None
        self.cancelled: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and len(self.cancelled) < self.times:
            for job in workdir_jobs(self.workdir):
                if job["state"] != "RUNNING" or not job["comment"].startswith("rule_influence_shard_"):
                    continue
                if job["id"] in self.cancelled or (self.comment and job["comment"] != self.comment):
                    continue
                subprocess.run(["scancel", job["id"]], check=True)
                self.comment = job["comment"]
                self.cancelled.append(job["id"])
                print(f"[slurm-live] scancel {job['id']} ({job['comment']})", flush=True)
            time.sleep(0.3)


def sbatch_comments(record: Path) -> list[str]:
    return [check_profile.option(json.loads(line), "--comment") for line in record.read_text().splitlines()]


def test_a_cancelled_influence_shard_is_all_a_rerun_redoes(slurm, tiny_model_dir, tmp_path):
    work = make_workdir(tmp_path / "work")
    results = work / "results" / EXPERIMENT
    # --snakefile last: --configfile would take the targets that follow for config files.
    local = [sys.executable, "-m", "snakemake", "--configfile", str(CONFIG), "--directory", str(work),
             "--snakefile", str(ROOT / "Snakefile")]  # fmt: skip

    # The stand-ins: files without Snakemake metadata, so only their mtimes could make their jobs rerun.
    write_stand_ins(results)

    profile, _ = check_profile.write_profile(PROFILE, work / "profile")
    retries = profile["preemptible-retries"]
    assert "influence_shard" in profile["preemptible-rules"]
    record = work / "sbatch.jsonl"
    env = check_profile.job_environment(
        check_profile.write_sbatch_recorder(shutil.which("sbatch"), record, work / "bin")
    )
    cluster = [*local, "--profile", str(work / "profile"), "--jobs", str(SHARDS + 1),
               *check_profile.LOCAL_SLURM_OPTIONS]  # fmt: skip

    # The plan (a dry run prints every job as `rule`; the real run says which ran locally).
    dry = subprocess.run([*cluster, "--dry-run", TARGET], capture_output=True, text=True, cwd=work, env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    plan = sorted(job["rule"] for job in check_profile.parse_plan(dry.stdout + dry.stderr).values())
    assert plan == ["gather_influence", *["influence_shard"] * SHARDS, "reference_set", "warmup_student"], plan

    # Run 1: cancel one running shard, and its resubmissions (the profile's retries), until Snakemake gives up
    # on it; --keep-going lets the other shards finish.
    canceller = ShardCanceller(work, times=retries + 1)
    canceller.start()
    start = time.monotonic()
    returncode = check_profile.run_watched([*cluster, "--keep-going", TARGET], env, work / "run1.log", 300, cwd=work)
    first_run = time.monotonic() - start
    canceller.done.set()
    canceller.join(5)
    log = (work / "run1.log").read_text()
    assert canceller.comment, "no influence shard was seen running in Slurm:\n" + log[-4000:]
    assert len(canceller.cancelled) == retries + 1, (canceller.cancelled, log[-4000:])
    assert returncode != 0, "Snakemake succeeded although a shard was cancelled in every attempt"
    assert "Falling back to 'sacct'" not in log  # the status came from squeue
    assert log.count("SLURM status is: 'CANCELLED'") == retries + 1, log[-4000:]
    cancelled_item = re.fullmatch(r"rule_influence_shard_wildcards_1_(\d+-of-\d+)", canceller.comment).group(1)
    shards = {item: work / SHARD_OUTPUT.format(item.split("-")[0]) for item in
              (f"{i}-of-{SHARDS}" for i in range(1, SHARDS + 1))}  # fmt: skip
    assert not shards[cancelled_item].exists()
    kept = {item: path for item, path in shards.items() if item != cancelled_item}
    assert all(path.exists() for path in kept.values()), log[-4000:]
    assert not (work / TARGET).exists()
    # Every Slurm job was the warm-up or a shard (the localrules never reached sbatch); the cancelled shard was
    # submitted once and once per retry, every other one once.
    comments = sbatch_comments(record)
    assert sorted(comments) == sorted(
        ["rule_warmup_student", *(f"rule_influence_shard_wildcards_1_{item}" for item in shards)]
        + [canceller.comment] * retries
    ), comments
    # The localrule ran in this process: no sbatch call above, `localrule` in the log.
    assert "localrule reference_set:" in log
    before = {path: path.stat().st_mtime_ns for path in [*kept.values(), results / "warmup/student",
                                                           results / "pool/reference.parquet"]}  # fmt: skip

    # The plan of the rerun: the cancelled shard and the gather, nothing else.
    dry = subprocess.run([*cluster, "--dry-run", TARGET], capture_output=True, text=True, cwd=work, env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert sorted(job["name"] for job in check_profile.parse_plan(dry.stdout + dry.stderr).values()) == [
        "gather_influence[iteration=1]", f"influence_shard[iteration=1, scatteritem={cancelled_item}]"
    ]  # fmt: skip

    # Run 2 redoes exactly that: one sbatch job, the gather in this process; every other output untouched.
    start = time.monotonic()
    returncode = check_profile.run_watched([*cluster, TARGET], env, work / "run2.log", 300, cwd=work)
    second_run = time.monotonic() - start
    log = (work / "run2.log").read_text()
    assert returncode == 0, log[-4000:]
    assert sbatch_comments(record)[len(comments) :] == [canceller.comment]
    assert len(check_profile.submitted_jobs(log)) == 1 and "localrule gather_influence:" in log
    assert {path: path.stat().st_mtime_ns for path in before} == before
    scores = pd.read_parquet(work / TARGET)
    assert len(scores) == 12 and scores["candidate_id"].is_unique
    print(f"[slurm-live] Slurm up in {slurm:.1f} s; run 1 {first_run:.1f} s, run 2 {second_run:.1f} s")


@pytest.fixture(autouse=True)
def _cancel_leftovers(tmp_path):
    """A failed test leaves none of its jobs in the queue."""
    yield
    if shutil.which("squeue"):
        ids = [job["id"] for job in workdir_jobs(tmp_path / "work") if job["state"] in ("PENDING", "RUNNING")]
        if ids:
            subprocess.run(["scancel", *ids], check=False)


def test_the_cluster_profile_retries_exactly_its_gpu_rules():
    """Every rule the profile sends to the GPU partition is resubmitted after a failure (preemption, a lost node);
    the short CPU jobs are not. Snakemake takes `preemptible-retries` as those rules' retry count under any executor
    (Rule.restart_times); the live test above sees the plugin resubmit a cancelled shard that many times."""
    profile = yaml.safe_load(PROFILE.read_text())
    gpu_rules = {rule for rule, res in profile["set-resources"].items() if res.get("slurm_partition") == "gpu"}
    # And the strong teacher's synthesis, a CPU job of a day of API requests: an outage or a preempted node
    # should not end the run (its cached requests make the retry cheap).
    assert set(profile["preemptible-rules"]) == gpu_rules | {"synthesize_strong_teacher"}
    assert profile["preemptible-retries"] >= 1 and "retries" not in profile
