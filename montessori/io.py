"""Reading user data with errors that point at the file and line, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


class DataError(ValueError):
    """Malformed input data; the message names the file and line."""


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_records(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Records of a JSON list or a JSON-lines file (optionally .gz); each must hold the `required` string keys."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with _open_text(path) as f:
        text = f.read()
    stripped = text.lstrip()
    records: list[tuple[int, Any]]
    if stripped.startswith("["):
        try:
            records = [(0, r) for r in json.loads(text)]
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON line ({e.msg})") from None
    out = []
    for index, (lineno, record) in enumerate(records):
        where = f"{path}:{lineno}" if lineno else f"{path}: record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in required:
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: missing string field {key!r} (has: {', '.join(sorted(record))})")
        out.append(record)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    # mkdtemp/mkstemp create 0700/0600, which would hide results from the other users of a shared cluster
    # filesystem; give the output the mode a plain open() or mkdir() would (the umask decides).
    tmp.chmod((0o777 if is_dir else 0o666) & ~_umask())
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def read_frame(frame: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A frame as given, or read from a parquet file (the form a multi-process stage's arguments take)."""
    return frame if isinstance(frame, pd.DataFrame) else pd.read_parquet(frame)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def file_provenance(path: str | Path) -> dict[str, str]:
    """Which file a result used: its path (relative to the checkout when inside it) and the sha256 of its bytes."""
    path = Path(path).resolve()
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return {"file": str(name), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
