"""What every Snakemake script does first: print only to the rule's log file, size torch to the job's threads."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def start_job(snakemake: Any) -> logging.Logger:
    """Route everything the job prints to snakemake.log[0]; use the job's threads for torch.

    The job's file descriptors 1 and 2 are pointed at the log, not only Python's sys.stdout/sys.stderr: vLLM's
    engine, C++ warnings and child processes (vLLM workers, torchrun ranks) write to the descriptors they
    inherit. The terminal keeps Snakemake's own progress; a failed job's log is shown there by Snakemake
    (show-failed-logs in the profiles).
    """
    name = snakemake.rule
    if snakemake.log:
        os.makedirs(os.path.dirname(snakemake.log[0]) or ".", exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # O_APPEND: the ranks of a multi-process job (montessori.launch) append to the same file, and a shared
        # offset would let one overwrite another's lines.
        log_fd = os.open(snakemake.log[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Quiet the HF hub: compute nodes are often air-gapped, and every model we load is on disk.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Most scripts have imported torch (through the library) by now; the others should not pay for importing it.
    threads = str(max(1, int(snakemake.threads)))
    os.environ["OMP_NUM_THREADS"] = threads
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    logger = logging.getLogger(f"montessori.{name}")
    logger.info("rule %s, wildcards %s, threads %s", name, dict(snakemake.wildcards), snakemake.threads)
    return logger


def job_progress_spec(snakemake: Any) -> dict[str, str]:
    """Where the job saves its progress (the rule's `progress` param) and the digest of the job's params and inputs
    that the saved steps belong to (montessori.progress)."""
    from montessori.progress import job_digest

    params = {name: value for name, value in snakemake.params.items() if name != "progress"}
    return {"path": snakemake.params.progress, "digest": job_digest(params, list(snakemake.input))}


def job_progress(snakemake: Any):
    """The job's progress file (montessori.progress): what a rerun of the job continues from after it was killed."""
    from montessori.progress import ProgressFile

    return ProgressFile(**job_progress_spec(snakemake))
