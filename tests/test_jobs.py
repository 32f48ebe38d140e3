"""start_job: whatever a job prints — Python, C-level writes, child processes — goes to its log, not the terminal."""

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

JOB = textwrap.dedent(
    """
    import os, subprocess, sys, warnings
    from types import SimpleNamespace
    from montessori.jobs import start_job

    print("before start_job")
    job = SimpleNamespace(rule="probe", log=[sys.argv[1]], threads=1, wildcards={})
    log = start_job(job)
    log.info("a library log line")
    print("python stdout")
    print("python stderr", file=sys.stderr)
    warnings.warn("a library warning")
    os.write(1, b"fd 1 write\\n")
    os.write(2, b"fd 2 write\\n")
    subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); print('child stderr', file=sys.stderr)"])
    raise SystemExit("the job failed")
    """
)


def test_a_job_prints_only_to_its_log(tmp_path):
    log_path = tmp_path / "logs" / "probe.log"
    log_path.parent.mkdir()
    log_path.write_text("a previous attempt's log\n")
    result = subprocess.run(
        [sys.executable, "-c", JOB, str(log_path)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 1
    # Only what was printed before the job took over its descriptors reaches the terminal.
    assert result.stdout == "before start_job\n" and result.stderr == ""
    log = log_path.read_text()
    assert "a previous attempt's log" not in log
    for line in (
        "INFO montessori.probe: rule probe",
        "INFO montessori.probe: a library log line",
        "python stdout",
        "python stderr",
        "UserWarning: a library warning",
        "fd 1 write",
        "fd 2 write",
        "child stdout",
        "child stderr",
        "the job failed",
    ):
        assert line in log, line
    # Python's own stdout is line-buffered after the switch, so the log keeps the order things happened in.
    assert log.index("python stdout") < log.index("fd 1 write") < log.index("child stdout")
