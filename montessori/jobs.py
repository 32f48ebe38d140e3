"""What every Snakemake script does first: log to the rule's log file, size torch to the job's threads."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO


class _Tee:
    """Copies a stream (progress bars, library warnings) into the job's log file as well."""

    def __init__(self, stream: TextIO, log_file: TextIO):
        self._stream, self._log_file = stream, log_file

    def write(self, text: str) -> int:
        self._log_file.write(text)
        self._log_file.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log_file.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def start_job(snakemake: Any) -> logging.Logger:
    """Route logging and stderr to snakemake.log[0] (and the terminal); use the job's threads for torch."""
    name = snakemake.rule
    if snakemake.log:
        os.makedirs(os.path.dirname(snakemake.log[0]) or ".", exist_ok=True)
        # Truncated, then appended to: the ranks of a multi-process job (montessori.launch) append to it too,
        # and a file opened for writing at an offset would overwrite their lines.
        open(snakemake.log[0], "w").close()
        log_file = open(snakemake.log[0], "a", buffering=1)
        sys.stderr = _Tee(sys.__stderr__, log_file)
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
