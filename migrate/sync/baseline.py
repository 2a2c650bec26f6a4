"""What sync last wrote on the target for each key (sync/baseline.sqlite): the ground truth of compare-and-set.

After the flip the new cache belongs to the apps. A forwarded old-side write may only replace what sync
itself put there: forward.py compares the target's current state with the digest recorded here, and
bring-back deletes on the old Redis only keys that sync put on the cache (existed at the flip, or were
created by a forwarded write).

One row per key: `digest` (None: sync deleted it), `origin` (1 written by sync's copy/follow before the
flip, 2 by a forwarded write), `conflict` (a forward found the key changed by an app: the cache owns it,
later forwards skip it at once) and `at`. The file is 0600 in the 0700 run dir: key names are data.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import time
from collections.abc import Iterable

from ..rundir import DIR_MODE, FILE_MODE, RunDir

COPY, FORWARD = 1, 2
_TRAILER = 10  # a DUMP payload ends with a 2-byte RDB version and a CRC64
_EXPIRY = struct.Struct(">q")
SCHEMA = ("CREATE TABLE IF NOT EXISTS baseline (key BLOB PRIMARY KEY, digest BLOB, origin INTEGER NOT NULL DEFAULT 1,"
          " conflict INTEGER NOT NULL DEFAULT 0, at REAL)")


def digest(payload: bytes | None, expire_at_ms: int) -> bytes | None:
    """sha1 of a DUMP payload's body (without its RDB version and CRC, which differ between engine versions for
    the same value) and the absolute expiry, followed by the expiry itself (8 bytes), so that a reader can tell
    a key that expired from one an app deleted. None when the key is gone."""
    if payload is None:
        return None
    body = payload[:-_TRAILER] if len(payload) > _TRAILER else payload
    expire = int(expire_at_ms) if expire_at_ms is not None and int(expire_at_ms) >= 0 else -1
    return hashlib.sha1(body + b"|" + str(expire).encode()).digest() + _EXPIRY.pack(expire)


def expiry_of(value: bytes | None) -> int | None:
    """The absolute expiry (ms, -1 none) a digest was made with; None for a deleted key or an old digest."""
    if value is None or len(value) != 28:
        return None
    return _EXPIRY.unpack(value[20:])[0]


def expired(value: bytes | None, now_ms: int, slack_ms: int = 1000) -> bool:
    """The recorded key had an expiry that is due: the target may have dropped it on its own."""
    expire = expiry_of(value)
    return expire is not None and expire >= 0 and expire <= now_ms + slack_ms


class Baseline:
    """The table, opened by sync (which writes it) and by cutover's bring-back (which reads it)."""

    def __init__(self, run_dir: RunDir, name: str = "baseline", fresh: bool = False) -> None:
        """`name` "baseline" is sync's; another name keeps a separate table in the same folder."""
        folder = run_dir.path / "sync"
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        self.path = folder / f"{name}.sqlite"
        if fresh:
            for stale in (self.path, self.path.with_name(self.path.name + "-wal"),
                          self.path.with_name(self.path.name + "-shm")):
                stale.unlink(missing_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def record(self, items: Iterable[tuple], origin: int = COPY) -> None:
        """What sync wrote on the target: (key, digest) pairs, digest None for a delete. Once a forward wrote a key
        (origin FORWARD: the digest of what the target then held) or found it a conflict, a later COPY record
        of the same key (sync's own after-batch hook, from the source's payload) changes nothing."""
        now = time.time()
        rows = [(bytes(item[0]), item[1], origin, now) for item in items]
        with self._db:
            self._db.executemany(
                "INSERT INTO baseline (key, digest, origin, conflict, at) VALUES (?, ?, ?, 0, ?) "
                "ON CONFLICT(key) DO UPDATE SET digest = excluded.digest, at = excluded.at, origin = excluded.origin "
                "WHERE excluded.origin >= baseline.origin AND baseline.conflict = 0", rows)

    def record_missing(self, items: Iterable[tuple]) -> int:
        """Rows for keys the baseline does not know yet (a write sync records meanwhile wins); how many were new."""
        rows = [(bytes(item[0]), item[1], COPY, time.time()) for item in items]
        with self._db:
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO baseline (key, digest, origin, conflict, at) "
                                 "VALUES (?, ?, ?, 0, ?)", rows)
            return self._db.total_changes - before

    def get(self, key: bytes) -> tuple[bool, bytes | None]:
        """(known, digest) for a key."""
        row = self._db.execute("SELECT digest FROM baseline WHERE key = ?", (bytes(key),)).fetchone()
        return (row is not None, row[0] if row else None)

    def state(self, key: bytes) -> tuple[bytes | None, bool]:
        """(digest sync last wrote or None, whether the key is a known conflict)."""
        row = self._db.execute("SELECT digest, conflict FROM baseline WHERE key = ?", (bytes(key),)).fetchone()
        return (row[0], bool(row[1])) if row else (None, False)

    def mark_conflict(self, key: bytes) -> bool:
        """The cache owns this key from now on. True the first time (so the conflict is reported once)."""
        with self._db:
            row = self._db.execute("SELECT conflict FROM baseline WHERE key = ?", (bytes(key),)).fetchone()
            if row is None:
                self._db.execute("INSERT INTO baseline (key, digest, origin, conflict, at) VALUES (?, NULL, 0, 1, ?)",
                                 (bytes(key), time.time()))
                return True
            if row[0]:
                return False
            self._db.execute("UPDATE baseline SET conflict = 1 WHERE key = ?", (bytes(key),))
            return True

    def put_by_sync(self, keys: list[bytes]) -> set[bytes]:
        """Of these keys, those sync left present on the cache (existed at the flip or created by a forwarded
        write): bring-back may delete them on the old Redis when the cache no longer has them."""
        found: set[bytes] = set()
        for start in range(0, len(keys), 500):
            chunk = [bytes(k) for k in keys[start:start + 500]]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._db.execute(
                f"SELECT key FROM baseline WHERE digest IS NOT NULL AND key IN ({marks})", chunk))
        return found

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM baseline").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Baseline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
