"""Finished judgments on disk, so that a rerun or a resumed run pays only for what is missing."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from montessori.judges.base import JudgeError, Judgment


class JudgmentCache:
    """Finished judgments in a sqlite file: one committed row per judgment, shareable between processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # sqlite's file lock serialises writers of parallel jobs; the timeout lets them queue instead of fail.
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, judge_id TEXT NOT NULL,"
                " request TEXT NOT NULL, text TEXT NOT NULL, top_logprobs TEXT, created REAL NOT NULL)"
            )
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise JudgeError(f"{self.path}: not a usable judgment cache ({e}); move it away to start afresh") from e

    def get(self, key: str) -> Judgment | None:
        row = self._db.execute("SELECT text, top_logprobs FROM judgments WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        top = None if row[1] is None else [[(t, lp) for t, lp in step] for step in json.loads(row[1])]
        return Judgment(text=row[0], top_logprobs=top, cached=True)

    def put(self, key: str, judge_id: str, request: Mapping[str, Any], judgment: Judgment) -> None:
        top = None if judgment.top_logprobs is None else json.dumps(judgment.top_logprobs)
        self._db.execute(
            "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?)",
            (key, judge_id, json.dumps(request, ensure_ascii=False), judgment.text, top, time.time()),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()
