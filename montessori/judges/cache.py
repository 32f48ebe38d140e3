"""A disk cache of records by key, safe for many concurrent jobs on a shared filesystem (NFS, Lustre).

Layout: a directory of JSON-lines files, one per writing process, named `<writer label>-<host>-<pid>-<random>.jsonl`
and created at its first record. Each line is `{"key": ..., "record": {...}}`, appended with one write and then
flushed to disk (fsync) before `put` returns, so a record that was paid for is on disk before anyone relies on it.
Whoever looks up a key reads every file of the directory.

Why this is safe without locks:
- every file has exactly one writer, the process that created it (O_EXCL, a name no other process can pick), so
  appends never interleave and no lock is needed; sqlite's file locks, which NFS and Lustre do not implement
  reliably, are what made one shared database file written by many Slurm jobs a known way to corrupt it;
- readers only read. A line is used only once its newline is on disk; a last line without one is a record cut off
  by a crash (or one its writer is still writing): it is skipped and reported, and its key is simply looked up
  again, so a crash loses at most the one record it interrupted. A damaged line anywhere else is skipped and
  reported the same way;
- nobody ever appends to another process's file, so a torn line stays the last line of a dead writer's file and
  can never be glued to a later record.

Lookups stay fast for tens of thousands of records: opening the cache indexes every complete line by its key
(read from the line's fixed prefix, without parsing the record) as file, offset and length; a hit reads and parses
just that line. `refresh()` indexes what other jobs appended since, reading only the new bytes. When two files hold
the same key (two concurrent jobs paid for the same record), the first one indexed wins.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
# Keys are written verbatim into each line's prefix, which the index reads without a JSON parser.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_PREFIX = b'{"key":"'


class CacheError(RuntimeError):
    """A cache directory that cannot be used; the message names the path and what to do."""


class _Entry(NamedTuple):
    path: Path
    offset: int
    length: int
    line: int


@dataclass
class _FileState:
    consumed: int = 0  # bytes of complete lines indexed so far
    lines: int = 0
    torn_at: int | None = None  # offset of an incomplete last line already reported


def _safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_.") or "cache"


class RecordCache:
    """Records (JSON objects) by key in `directory`; this process appends to its own file only.

    `writer` labels this process's file (e.g. the Snakemake job), to tell the files apart; uniqueness comes from
    the host, the process id and a random suffix appended to it.
    """

    def __init__(self, directory: str | Path, writer: str = "cache"):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise CacheError(
                f"{self.directory}: is a file, but the cache is a directory of {SUFFIX} files"
                " (an old sqlite judgment cache? it is not read any more: move it away)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{_safe_label(writer)}-{_safe_label(socket.gethostname())}-{os.getpid()}-{secrets.token_hex(4)}"
        self.file = self.directory / f"{name}{SUFFIX}"
        self.problems: list[str] = []
        self._fd: int | None = None
        self._own_lines = 0
        self._own_size = 0
        self._index: dict[str, _Entry] = {}
        self._files: dict[Path, _FileState] = {}
        self.refresh()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def refresh(self) -> int:
        """Index what the other files gained since the last call; returns how many keys are new."""
        before = len(self._index)
        torn: list[tuple[str, str | None]] = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path != self.file:
                self._index_file(path, self._files.setdefault(path, _FileState()), torn)
        for problem, key in torn:
            self.problems.append(problem)
            if key is not None and key in self._index:
                # A later run redid the interrupted record: nothing is missing, so no need to warn every job.
                log.info("record cache %s (a complete copy is in the cache)", problem)
            else:
                log.warning("record cache %s", problem)
        return len(self._index) - before

    def _index_file(self, path: Path, state: _FileState, torn: list[tuple[str, str | None]]) -> None:
        try:
            with open(path, "rb") as f:
                f.seek(state.consumed)
                data = f.read()
        except FileNotFoundError:
            return  # removed by hand since it was listed
        end = data.rfind(b"\n") + 1
        start = 0
        while start < end:
            # Lines are walked in place, without copying them: a cache holds hundreds of MiB.
            newline = data.index(b"\n", start)
            state.lines += 1
            key = self._key_at(data, start, newline)
            if key is None:
                self._report(f"{path}:{state.lines}: not a cache line ({data[start : start + 60]!r}...): skipped")
            else:
                self._index.setdefault(key, _Entry(path, state.consumed + start, newline - start, state.lines))
            start = newline + 1
        state.consumed += end
        tail = data[end:]
        if tail.strip(b"\0") and state.torn_at != state.consumed:
            state.torn_at = state.consumed
            problem = (
                f"{path}:{state.lines + 1}: incomplete last line ({len(tail)} bytes; a crash while writing it, or"
                " a job still writing it): skipped, its record is looked up again"
            )
            torn.append((problem, self._key_at(tail, 0, len(tail))))

    @staticmethod
    def _key_at(data: bytes, start: int, stop: int) -> str | None:
        """The key in the prefix of the line data[start:stop], or None if the line has no valid one."""
        if not data.startswith(_PREFIX, start, stop):
            return None
        close = data.find(b'"', start + len(_PREFIX), min(stop, start + len(_PREFIX) + 201))
        key = data[start + len(_PREFIX) : close].decode("ascii", errors="replace") if close > 0 else ""
        return key if KEY_PATTERN.fullmatch(key) else None

    def _report(self, problem: str) -> None:
        self.problems.append(problem)
        log.warning("record cache %s", problem)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The records of those `keys` that are cached; each file is opened once."""
        by_file: dict[Path, list[tuple[str, _Entry]]] = {}
        for key in dict.fromkeys(keys):
            entry = self._index.get(key)
            if entry is not None:
                by_file.setdefault(entry.path, []).append((key, entry))
        found: dict[str, dict[str, Any]] = {}
        for path, entries in by_file.items():
            with open(path, "rb") as f:
                for key, entry in sorted(entries, key=lambda e: e[1].offset):
                    f.seek(entry.offset)
                    record = self._decode(f.read(entry.length), key)
                    if record is None:
                        self._report(f"{path}:{entry.line}: damaged line: skipped, its record is looked up again")
                        del self._index[key]
                    else:
                        found[key] = record
        return found

    @staticmethod
    def _decode(raw: bytes, key: str) -> dict[str, Any] | None:
        try:
            line = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(line, dict) or line.get("key") != key or not isinstance(line.get("record"), dict):
            return None
        return line["record"]

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Append `record` under `key` to this process's file and fsync it before returning."""
        if not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"cache key {key!r} must match {KEY_PATTERN.pattern}")
        line = json.dumps({"key": key, "record": record}, ensure_ascii=False, separators=(",", ":"))
        data = (line + "\n").encode("utf-8")
        if self._fd is None:
            self._fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            self._fsync_directory()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        self._own_lines += 1
        self._index[key] = _Entry(self.file, self._own_size, len(data) - 1, self._own_lines)
        self._own_size += len(data)

    def _fsync_directory(self) -> None:
        """Make the new file's name durable too, not only its content."""
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems cannot fsync a directory; the file's own fsync still holds its records
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
