"""Runs a slice of the pipeline through a real Slurm with profiles/slurm/ and checks that every job was an sbatch job.

`make slurm-check` runs it after tests/slurm/local_slurm.sh has started a one-node Slurm on this machine; it works
against any Slurm whose partitions are named like the profile's (cpu, gpu) and whose nodes fit its requests:

1. Derive a profile from profiles/slurm/config.yaml: the same settings minus what this machine cannot provide
   (derive_profile says what and why), written to .snakemake/slurm-check/profile/.
2. Put a recording `sbatch` first on PATH: it appends each argv the plugin submits to sbatch.jsonl, then execs the
   real sbatch. That records the exact submitted command lines without Snakemake's --verbose (whose jobs would
   dump their whole environment into the Slurm logs).
3. From a clean results/<experiment>/, dry-run the target (the plan, and what Snakemake gives each job; it refuses
   to rebuild a model that exists), then run it for real with the profile's `executor: slurm`.
4. Check every planned job: submitted (a Slurm id in Snakemake's log); COMPLETED with exit code 0 in
   `scontrol show job`; partition, time limit, memory, CPUs and GPUs the same in Snakemake's plan, in the sbatch
   call and in Slurm, and equal to the profile's values where the profile sets them; the sbatch call exports the
   environment (--export=ALL) and runs Snakemake with this venv's python and the profile's latency-wait.
5. Print a summary: each job's Slurm id, what Slurm granted, its run time and the threads it ran with.

Exit code 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".snakemake/slurm-check"
VENV_BIN = Path(sys.executable).parent
# Which sbatch option carries which Snakemake resource (snakemake_executor_plugin_slurm.submit_string).
SBATCH_OPTION = {"slurm_partition": "-p", "runtime": "-t", "mem_mb": "--mem", "threads": "--cpus-per-task"}


def derive_profile(profile: dict) -> dict:
    """The real profile with only the settings this machine cannot honour taken out, each said why."""
    derived = dict(profile)
    # No conda channel is reachable here: the jobs use the environment Snakemake itself runs in (this venv, which
    # carries the same pins as envs/montessori.yaml: tests/test_envs.py). Everything else of the profile stays.
    derived.pop("software-deployment-method", None)
    derived.pop("use-conda", None)
    return derived


def write_profile(source: Path, dest_dir: Path) -> tuple[dict, dict]:
    """The derived profile of `source` as dest_dir/config.yaml; returns (the real profile, the derived one)."""
    profile = yaml.safe_load(Path(source).read_text())
    derived = derive_profile(profile)
    dropped = sorted(set(profile) - set(derived))
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / "config.yaml").write_text(
        f"# Derived by tests/slurm/check_profile.py from {source}: the same settings without "
        f"{', '.join(dropped) or 'nothing'} (no conda channel on this machine).\n"
        + yaml.safe_dump(derived, sort_keys=False)
    )
    return profile, derived


# Settings of the local Slurm (tests/slurm/local_slurm.sh), not of the profile. Job status from squeue: it has
# no accounting database, so `sacct` fails (the plugin would pick sacct, since slurm-client installs the
# command), while MinJobAge=3600 keeps finished jobs in squeue for an hour. The first status check after 2 s
# instead of 40 s. The Slurm logs of successful jobs are kept, for the checks.
LOCAL_SLURM_OPTIONS = [
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
]  # fmt: skip


def slurm_problem() -> str | None:
    """Why no job can run on a Slurm here (no client, no idle node), or None when one can."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "no Slurm client on PATH: run tests/slurm/local_slurm.sh (as root) first"
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if not {"idle", "mixed"} & set(states):
        return f"no idle Slurm node (sinfo: {states or 'no answer'}): run tests/slurm/local_slurm.sh"
    return None


def job_environment(bin_dir: Path) -> dict[str, str]:
    """The environment of a local run (the Makefile's), with bin_dir (the recording sbatch) and the venv first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(VENV_BIN), env["PATH"]])
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def submitted_jobs(text: str) -> list[tuple[str, str]]:
    """(Slurm id, Slurm log) of every job a Snakemake log says it submitted."""
    return re.findall(r"Job \d+ has been submitted with SLURM jobid (\S+) \(log: (\S+)\)\.", text)


def parse_plan(text: str) -> dict[str, dict]:
    """The job blocks of a dry run ("rule NAME:" ... "resources: ...") by the --comment the plugin gives each."""
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", text):
        head = re.match(r"(local)?rule (\S+):\n", block)
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        if not head or "jobid" not in fields:
            continue
        rule, wildcards = head.group(2), fields.get("wildcards", "")
        # rule_<name>[_wildcards_<values joined by _>]: the plugin's run_job and utils.get_job_wildcards.
        values = "_".join(item.partition("=")[2] for item in wildcards.split(", ")) if wildcards else ""
        comment = f"rule_{rule}" + (f"_wildcards_{values.replace('/', '_')}" if values else "")
        jobs[comment] = {
            "rule": rule,
            "name": f"{rule}[{wildcards}]" if wildcards else rule,
            "local": bool(head.group(1)),
            "threads": str(fields.get("threads", 1)),
            "log": fields.get("log", ""),
            "resources": dict(item.partition("=")[::2] for item in fields.get("resources", "").split(", ")),
        }
    return jobs


def scontrol_job(slurm_id: str) -> dict[str, str]:
    """The job as slurmctld knows it (finished ones too, for MinJobAge seconds); {} once it is gone."""
    out = subprocess.run(["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def minutes(limit: str) -> str:
    """Slurm's time limit, [D-]HH:MM:SS, in minutes (Snakemake's runtime unit)."""
    days, _, hms = limit.rpartition("-")
    parts = [int(x) for x in hms.split(":")] if hms else [0]
    h, m, s = [0] * (3 - len(parts)) + parts
    return str((int(days) if days else 0) * 1440 + h * 60 + m + (1 if s else 0))


def seconds(elapsed: str) -> int:
    days, _, hms = elapsed.rpartition("-")
    parts = [int(x) for x in hms.split(":")] if hms else [0]
    h, m, s = [0] * (3 - len(parts)) + parts
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def megabytes(memory: str) -> str:
    """Slurm's memory (2000M, 62.50G) in MB, Snakemake's mem_mb (Slurm's M and G are MiB and GiB)."""
    found = re.fullmatch(r"([\d.]+)([KMGT]?)", memory or "")
    if not found:
        return repr(memory)
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[found.group(2)]
    return str(round(float(found.group(1)) * scale))


def option(argv: list[str], name: str) -> str | None:
    """The value of a command-line option in either form, `-p gpu` or `--gpus=1`."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def write_sbatch_recorder(real_sbatch: str, record: Path, bin_dir: Path = WORK / "bin") -> Path:
    """A directory whose `sbatch` appends its argv to `record` (one JSON list a line), then runs the real one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "sbatch"
    shim.write_text(
        f"#!{sys.executable}\n"
        "# Written by tests/slurm/check_profile.py: records the plugin's sbatch argv, then runs the real sbatch.\n"
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({real_sbatch!r}, [{real_sbatch!r}, *sys.argv[1:]])\n"
    )
    shim.chmod(0o755)
    return bin_dir


def run_watched(cmd: list[str], env: dict, log_path: Path, stall_seconds: int, cwd: Path | None = None) -> int:
    """Runs Snakemake, teeing its output to log_path; ends it if it stalls with none of its jobs in Slurm.

    snakemake-executor-plugin-slurm 2.6.1 builds and runs each sbatch call in a worker thread whose exceptions
    nobody collects: a job it refuses to submit (a forbidden slurm_extra option, a malformed gres, an unknown
    account) leaves Snakemake waiting for it forever, without a message. The stall check catches that.
    """
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        last_output = [time.monotonic()]
        run_id: list[str] = []

        def pump() -> None:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
                last_output[0] = time.monotonic()
                if found := re.search(r"SLURM run ID: (\S+)", line):
                    run_id.append(found.group(1))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        while proc.poll() is None:
            time.sleep(10)
            if not run_id or time.monotonic() - last_output[0] < stall_seconds:
                continue
            queued = subprocess.run(
                ["squeue", "-h", f"--name={run_id[0]}", "-t", "PENDING,CONFIGURING,RUNNING,COMPLETING", "-o", "%i"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if not queued:
                msg = (
                    f"[slurm-check] Snakemake printed nothing for {stall_seconds} s and has no job in Slurm: it waits "
                    "for a job the plugin could not submit and dropped the error (usually: an option in slurm_extra "
                    "that the plugin sets itself, such as --gres, --gpus or --mem; a malformed gres; an unknown "
                    "slurm_account). Ending it."
                )
                print(msg, flush=True)
                log.write(msg + "\n")
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()  # it would wait for the never-submitted job forever
                    proc.wait()
                    # A killed Snakemake leaves its working directory locked.
                    subprocess.run([*cmd[:-1], "--unlock"], env=env, cwd=cwd, capture_output=True)
                break
        reader.join(10)
        return proc.wait()


def check_job(
    job: dict, slurm_id: str, info: dict, argv: list[str] | None, profile: dict, run_id: str, workdir: Path = ROOT
) -> list[str]:
    """Everything wrong with one job, as problem lines."""
    problems = []
    name, res = job["name"], job["resources"]
    gpus = res.get("gpu", "0")
    planned = {
        "slurm_partition": res.get("slurm_partition"),
        "runtime": res.get("runtime"),
        "mem_mb": res.get("mem_mb"),
        "threads": job["threads"],
    }
    # What the profile sets for this rule must be what Snakemake planned (nothing overrode it on the way).
    own = dict(profile.get("set-resources", {}).get(job["rule"], {}))
    own["threads"] = profile.get("set-threads", {}).get(job["rule"])
    for key, value in own.items():
        if key in planned and value is not None and planned[key] != str(value):
            problems.append(f"{name}: the profile sets {key}={value}, Snakemake planned {planned[key]}")
    if argv is None:
        return problems + [f"{name} (Slurm {slurm_id}): no recorded sbatch call with --comment {info.get('Comment')}"]
    # The plan = the sbatch call.
    for key, value in planned.items():
        submitted = option(argv, SBATCH_OPTION[key])
        if submitted != value:
            problems.append(f"{name}: sbatch {SBATCH_OPTION[key]} {submitted}, planned {key}={value}")
    if option(argv, "--gpus") != (None if gpus == "0" else gpus):
        problems.append(f"{name}: sbatch --gpus {option(argv, '--gpus')}, planned gpu={gpus}")
    if "--export=ALL" not in argv:
        problems.append(f"{name}: sbatch without --export=ALL (the job would not see PYTHONPATH and the venv)")
    wrap = shlex.split(option(argv, "--wrap") or "")
    if len(wrap) < 3 or Path(wrap[0]).parent != VENV_BIN or wrap[1:3] != ["-m", "snakemake"]:
        problems.append(f"{name}: the job does not run Snakemake with this venv's python: {wrap[:3]}")
    wait = option(wrap, "--latency-wait")
    if "latency-wait" in profile and wait != str(profile["latency-wait"]):
        problems.append(f"{name}: the job waits {wait} s for its files, the profile says {profile['latency-wait']}")
    # The sbatch call = what Slurm granted and ran.
    granted = re.search(r"gres:gpu:(\d+)", info.get("TresPerJob", ""))
    got = {
        "JobState": (info.get("JobState"), "COMPLETED"),
        "ExitCode": (info.get("ExitCode"), "0:0"),
        "JobName": (info.get("JobName"), run_id),
        "WorkDir": (info.get("WorkDir"), str(workdir)),
        "Partition": (info.get("Partition"), planned["slurm_partition"]),
        "TimeLimit (min)": (minutes(info.get("TimeLimit", "")), planned["runtime"]),
        "MinMemoryNode (MB)": (megabytes(info.get("MinMemoryNode", "")), planned["mem_mb"]),
        "CPUs/Task": (info.get("CPUs/Task"), planned["threads"]),
        "GPUs": (granted.group(1) if granted else "0", gpus),
    }
    for key, (value, expected) in got.items():
        if value != expected:
            problems.append(f"{name} (Slurm {slurm_id}): {key} is {value!r} in Slurm, expected {expected!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="profiles/slurm/config.yaml", help="the profile to check")
    parser.add_argument("--target", default=None, help="default: results/<experiment>/iter1/influence.parquet")
    parser.add_argument("--experiment", default="slurm", help="results/<experiment>/ is wiped and rebuilt")
    parser.add_argument("--configfile", default="configs/test.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="Slurm jobs queued at once")
    parser.add_argument(
        "--stall-seconds",
        type=int,
        default=300,
        help="give up when Snakemake printed nothing for this long and none of its jobs is queued or running",
    )
    args = parser.parse_args()
    target = args.target or f"results/{args.experiment}/iter1/influence.parquet"
    os.chdir(ROOT)

    # 0. A Slurm that answers, with a node that takes jobs.
    if problem := slurm_problem():
        sys.exit(f"[slurm-check] {problem}")
    real_sbatch = shutil.which("sbatch")

    # 1. The derived profile.
    profile_dir = WORK / "profile"
    profile, derived = write_profile(Path(args.profile), profile_dir)
    dropped = sorted(set(profile) - set(derived))
    print(f"[slurm-check] profile {profile_dir.relative_to(ROOT)}/: {args.profile} without {', '.join(dropped)}")

    # 2. The recording sbatch, and the environment of a local run (the Makefile's).
    record = WORK / "sbatch.jsonl"
    record.unlink(missing_ok=True)
    env = job_environment(write_sbatch_recorder(real_sbatch, record))
    snakemake = [
        str(VENV_BIN / "snakemake"),
        "--profile", str(profile_dir),
        "--configfile", args.configfile,
        "--config", f"experiment={args.experiment}",
        # The profile's `jobs: 50` is for a cluster; this machine has 2 cores.
        "--jobs", str(args.jobs),
        *LOCAL_SLURM_OPTIONS,
        target,
    ]  # fmt: skip

    # 3. The plan, from a clean results/<experiment>/. A dry run's local executor caps threads at --cores, a
    # cluster run does not: hence the large --cores of the dry run alone.
    shutil.rmtree(ROOT / "results" / args.experiment, ignore_errors=True)
    dry = subprocess.run([*snakemake, "--dry-run", "--cores", "1024"], env=env, capture_output=True, text=True)
    if dry.returncode != 0:
        print(dry.stdout[-4000:], dry.stderr[-4000:], sep="\n")
        sys.exit("[slurm-check] the dry run failed")
    plan = parse_plan(dry.stdout + dry.stderr)
    for job in plan.values():
        # resources/ may be shared with another checkout, whose model this one's newer script mtimes would rebuild.
        model = re.fullmatch(r"build_model\[model=(.+)\]", job["name"])
        if model and (ROOT / "resources/models" / model.group(1)).exists():
            sys.exit(f"[slurm-check] the plan rebuilds the existing {job['name']}: refusing (see `snakemake -n`)")
    print(f"[slurm-check] plan: {len(plan)} jobs: {', '.join(job['name'] for job in plan.values())}")

    print("[slurm-check] $ " + shlex.join(snakemake), flush=True)
    log_path = WORK / "snakemake.log"
    start = time.monotonic()
    returncode = run_watched(snakemake, env, log_path, args.stall_seconds)
    wall = time.monotonic() - start

    # 4. Every planned job went through Slurm, as planned, and succeeded there.
    text = log_path.read_text()
    problems = [f"snakemake exited with {returncode} (log: {log_path.relative_to(ROOT)})"] if returncode else []
    submitted = submitted_jobs(text)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    call_by_comment = {option(argv, "--comment"): argv for argv in calls}
    run_id = next(iter(re.findall(r"SLURM run ID: (\S+)", text)), "?")
    if len(calls) != len(submitted):
        problems.append(f"{len(calls)} sbatch calls recorded for {len(submitted)} submitted jobs")
    seen, rows = set(), []
    for slurm_id, slurm_log in submitted:
        info = scontrol_job(slurm_id)
        comment = info.get("Comment", "")
        job = plan.get(comment)
        if job is None:
            problems.append(f"Slurm {slurm_id} ({comment or 'unknown to scontrol'}): not a job of the plan")
            continue
        seen.add(comment)
        problems += check_job(job, slurm_id, info, call_by_comment.get(comment), profile, run_id)
        if not Path(slurm_log).is_file():
            problems.append(f"{job['name']}: no Slurm log {slurm_log}")
        rule_log = Path(job["log"])
        used = re.search(r"threads (\d+)\s*$", rule_log.read_text(), flags=re.M) if rule_log.is_file() else None
        granted = re.search(r"gres:gpu:(\d+)", info.get("TresPerJob", ""))
        rows.append(
            [
                job["name"],
                slurm_id,
                info.get("Partition", "?"),
                info.get("CPUs/Task", "?"),
                megabytes(info.get("MinMemoryNode", "")),
                info.get("TimeLimit", "?"),
                granted.group(1) if granted else "0",
                info.get("JobState", "?"),
                seconds(info.get("RunTime", "")),
                used.group(1) if used else "-",
            ]
        )
    for comment in sorted(set(plan) - seen):
        problems.append(f"{plan[comment]['name']}: planned, never submitted to Slurm")

    # 5. Summary.
    header = ["job", "slurm id", "partition", "cpus", "mem (MB)", "time limit", "gpus", "state", "ran (s)", "threads"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print("\n[slurm-check] summary (threads: what the job ran with, capped at this machine's CPUs)")
    for row in [header, *rows]:
        print("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(
        f"[slurm-check] {len(rows)} of {len(plan)} planned jobs ran as Slurm jobs (job name {run_id}): "
        f"ids {', '.join(row[1] for row in rows) or 'none'}; {sum(row[8] for row in rows)} s in Slurm jobs, "
        f"{wall:.0f} s wall time"
    )
    print(f"[slurm-check] sbatch calls: {record.relative_to(ROOT)}; Snakemake log: {log_path.relative_to(ROOT)}")
    if problems:
        print("[slurm-check] FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("[slurm-check] OK: every job went through sbatch as the profile asked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
