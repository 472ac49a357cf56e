"""What prepare has already done, so a re-run skips it and a killed run resumes.

One SQLite row per utterance: the source file's signature (size + mtime), a digest of the
options that shape the prepared audio, the feature-cache key its features were written for, and
the audit record (so the report can be rebuilt without reading the audio again). SQLite commits
are atomic: a run killed mid-commit loses at most the last batch, which is simply redone. A file
is "unchanged" when its signature and the options digest match the row and its output exists.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A killed run redoes at most this much work; a commit costs a few ms.
COMMIT_EVERY_SECONDS = 0.5
COMMIT_EVERY_ROWS = 64


@dataclass(frozen=True)
class StateRow:
    source: str  # "size:mtime_ns" of the source WAV
    options: str  # digest of the audio options the output was made with
    feature_key: str  # "" when no features were written
    record: dict[str, Any]


class PrepareState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, source TEXT NOT NULL, options TEXT NOT NULL, "
            "feature_key TEXT NOT NULL DEFAULT '', record TEXT NOT NULL)"
        )
        self._db.commit()
        self._last_commit = time.monotonic()
        self._pending = 0

    def load(self) -> dict[str, StateRow]:
        rows = self._db.execute("SELECT id, source, options, feature_key, record FROM files")
        return {id_: StateRow(source, options, key, json.loads(record)) for id_, source, options, key, record in rows}

    def put(self, id_: str, row: StateRow) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO files (id, source, options, feature_key, record) VALUES (?, ?, ?, ?, ?)",
            (id_, row.source, row.options, row.feature_key, json.dumps(row.record, ensure_ascii=False)),
        )
        self._pending += 1
        if self._pending >= COMMIT_EVERY_ROWS or time.monotonic() - self._last_commit > COMMIT_EVERY_SECONDS:
            self.commit()

    def delete(self, ids: list[str]) -> None:
        self._db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in ids])

    def commit(self) -> None:
        self._db.commit()
        self._last_commit = time.monotonic()
        self._pending = 0

    def close(self) -> None:
        self.commit()
        self._db.close()
