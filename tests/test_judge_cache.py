"""The record cache under the judges: one append-only file per process, read together, safe without locks."""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from montessori.judges.cache import CacheError, RecordCache
from tests.conftest import ROOT

# A child process that appends `n` records of about 4 KB to the cache, as a job writes its judgments.
WRITER = """
import sys, time
from pathlib import Path
from montessori.judges.cache import RecordCache

directory, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
(go.parent / f"ready-{name}").touch()
while not go.exists():
    time.sleep(0.001)
cache = RecordCache(directory, writer=name)
for i in range(n):
    cache.put(f"{name}-{i}", {"writer": name, "i": i, "text": "x" * 4000})
    time.sleep(0.002)  # judgments arrive one by one
cache.close()
"""


def writer(directory: Path, name: str, n: int, go: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(directory), name, str(n), str(go)], cwd=ROOT)


def test_two_processes_write_at_once_and_a_reader_sees_every_record(tmp_path):
    directory, go, n = tmp_path / "cache", tmp_path / "go", 400
    children = [writer(directory, name, n, go) for name in ("a", "b")]
    while not all((tmp_path / f"ready-{name}").exists() for name in "ab"):
        time.sleep(0.01)
    go.touch()  # both start appending at once
    # A reader opened while both write sees only complete records, and a refresh picks up the rest.
    while sum(f.stat().st_size for f in directory.glob("*.jsonl")) < 2 * 20 * 4000 or not all(
        list(directory.glob(f"{name}-*")) for name in "ab"
    ):
        time.sleep(0.001)
    early = RecordCache(directory, writer="reader")
    keys = [f"{w}-{i}" for w in "ab" for i in range(n)]
    assert 0 < len(early) < 2 * n
    assert all(record["writer"] == key[0] for key, record in early.get_many(keys).items())
    assert all(child.wait(timeout=120) == 0 for child in children)
    early.refresh()
    assert len(early) == 2 * n and not [p for p in early.problems if "not a cache line" in p]
    reader = RecordCache(directory, writer="reader")
    assert len(reader) == 2 * n and reader.problems == []
    records = reader.get_many(keys)
    assert [(r["writer"], r["i"]) for r in records.values()] == [(w, i) for w in "ab" for i in range(n)]
    # One file per writer, each holding only its own records in the order written.
    files = sorted(directory.glob("*.jsonl"))
    assert [f.name.split("-")[0] for f in files] == ["a", "b"]
    for path, name in zip(files, "ab"):
        keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
        assert keys == [f"{name}-{i}" for i in range(n)]
    # A reader that only reads creates no file.
    assert len(list(directory.glob("reader-*"))) == 0


def test_a_torn_last_line_loses_only_that_record_and_is_reported(tmp_path, caplog):
    directory = tmp_path / "cache"
    first = RecordCache(directory, writer="job")
    for i in range(3):
        first.put(f"k{i}", {"i": i})
    first.close()
    size = first.file.stat().st_size
    with open(first.file, "r+b") as f:
        f.truncate(size - 5)  # the crash: the last record's line is cut off, its newline never written
    with caplog.at_level(logging.INFO, logger="montessori.judges.cache"):
        second = RecordCache(directory, writer="job")
    assert sorted(second.get_many(["k0", "k1", "k2"])) == ["k0", "k1"]
    (problem,) = second.problems
    assert f"{first.file}:3: incomplete last line" in problem
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    second.put("k2", {"i": 2, "redone": True})
    second.close()
    # Later readers find the redone record; the torn line is still reported, but only as information.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="montessori.judges.cache"):
        third = RecordCache(directory, writer="job")
    assert third.get("k2") == {"i": 2, "redone": True} and len(third) == 3
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_damaged_lines_are_skipped_and_named(tmp_path):
    directory = tmp_path / "cache"
    cache = RecordCache(directory, writer="job")
    cache.put("good", {"v": 1})
    cache.put("spoilt", {"v": 2})
    cache.close()
    lines = cache.file.read_bytes().splitlines(keepends=True)
    # A block of zeros, as a crashed NFS client can leave, and a line whose record was cut in the middle.
    cache.file.write_bytes(b"\0" * 20 + b"\n" + lines[0] + lines[1][:30] + b"\n")
    reader = RecordCache(directory, writer="job")
    assert reader.get("good") == {"v": 1}
    assert reader.get("spoilt") is None and "spoilt" not in reader
    assert [p.split(": ")[0] for p in reader.problems] == [f"{cache.file}:1", f"{cache.file}:3"]


def test_own_records_are_found_at_once_and_keys_are_checked(tmp_path):
    cache = RecordCache(tmp_path / "cache", writer="Alpaca Eval/montessori")
    assert not cache.file.exists()  # created at the first record only
    cache.put("a", {"text": "é\nnewline"})
    assert cache.get("a") == {"text": "é\nnewline"} and cache.file.name.startswith("Alpaca_Eval_montessori-")
    assert len(cache.file.read_text(encoding="utf-8").splitlines()) == 1
    with pytest.raises(ValueError, match="cache key"):
        cache.put('with "quotes"', {})
    cache.close()


def test_a_file_where_the_directory_should_be_is_named(tmp_path):
    old = tmp_path / "judge_cache.sqlite"
    old.write_bytes(b"SQLite format 3\0")
    with pytest.raises(CacheError, match=r"judge_cache.sqlite: is a file.*move it away"):
        RecordCache(old)
