"""A long job's progress on disk, so that a rerun after preemption, a time limit or a crash continues from it.

A progress file holds one JSON line per saved step (a synthesis round's rows, a batch of influence scores),
appended and fsync'd as the job goes. It lives outside the job's outputs (config: `results/EXPERIMENT/progress/`),
so it survives Snakemake's removal of a failed job's outputs; the job removes it once its outputs are written.

Its first line names the job it belongs to: a digest of the job's params and of its input files (sizes and
modification times). A rerun whose params or inputs changed (another config, a retrained teacher) finds another
digest and starts over instead of mixing in steps that no longer apply. A last line without its newline is a
step cut off by the kill: it is dropped and redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def files_fingerprint(paths: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file under `paths` (folders are walked): what a rerun of the job would read."""
    entries = []
    for top in map(Path, paths):
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            stat = path.stat()
            entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return entries


def job_digest(params: Mapping[str, Any], inputs: Iterable[str | Path]) -> str:
    """sha256 of the job's params (JSON) and its inputs' fingerprint."""
    payload = json.dumps({"params": params, "inputs": files_fingerprint(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ProgressFile:
    """The saved steps of one job at `path`, valid for the job whose digest is `digest`."""

    def __init__(self, path: str | Path, digest: str):
        self.path = Path(path)
        self.digest = digest
        self.steps: list[Any] = self._read()

    def _read(self) -> list[Any]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete, _, torn = data.rpartition(b"\n")
        if torn:
            log.warning("%s: dropping a step cut off while it was written (%d bytes)", self.path, len(torn))
        lines = complete.split(b"\n") if complete else []
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("job") != self.digest:
            log.info("%s: progress of another job (changed params or inputs): starting over", self.path)
            self.path.unlink()
            return []
        steps = [json.loads(line) for line in lines[1:]]
        if torn:
            # Rewritten without the torn step, so that the next append starts on a line of its own.
            self._write_all([header, *steps])
        log.info("%s: resuming after %d saved step(s)", self.path, len(steps))
        return steps

    def _write_all(self, records: list[Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, step: Any) -> None:
        """Save one step: on disk (fsync'd) when this returns."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_all([{"job": self.digest}])
        line = (json.dumps(step) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.steps.append(step)

    def remove(self) -> None:
        """The job's outputs are written: its progress is no longer needed."""
        self.path.unlink(missing_ok=True)
