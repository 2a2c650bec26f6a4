"""What sync last wrote on the target for each key (sync/baseline.sqlite), for cutover's compare-and-set.

Minimal version written by the sync helper; the cutover helper owns this module (its version wins).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable

from ..rundir import RunDir


def digest(payload: bytes | None, expire_at_ms: int) -> bytes | None:
    """sha1 of a DUMP payload and its absolute expiry (ms, -1 none); None when the key is gone."""
    if payload is None:
        return None
    return hashlib.sha1(payload + b"|" + str(expire_at_ms).encode()).digest()


class Baseline:
    """One row per key: the digest sync last wrote (NULL = sync deleted it)."""

    def __init__(self, run_dir: RunDir) -> None:
        folder = run_dir.path / "sync"
        folder.mkdir(mode=0o700, exist_ok=True)
        self.path = folder / "baseline.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a crash loses at most the last batches: they are re-read
        self._db.execute("CREATE TABLE IF NOT EXISTS baseline (key BLOB PRIMARY KEY, digest BLOB)")

    def record(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO baseline (key, digest) VALUES (?, ?)", list(items))

    def get(self, key: bytes) -> tuple[bool, bytes | None]:
        """(known, digest) for a key."""
        row = self._db.execute("SELECT digest FROM baseline WHERE key = ?", (key,)).fetchone()
        return (row is not None, row[0] if row else None)

    def close(self) -> None:
        self._db.close()
