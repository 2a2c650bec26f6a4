"""The run directory: an atomic JSON ledger per stage, the run lock, and what ties the dir to its endpoints.

Layout (0700, files 0600):
    run.json        which source/target/options this run dir belongs to (no secrets)
    dump.json       dump ledger: per-master cursor, next segment, counts
    replay.json     replay ledger: segments done, counts
    verify.json     the last verify result and its time (the cutover gate reads it)
    cutover.json    SSM values and versions before and after the cutover
    segments/       immutable dump segments
    lock            held (flock) by the process working on the run dir
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, fields
import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Iterator

import xxhash

from .errors import BadInput, RuntimeFailure

DIR_MODE = 0o700
FILE_MODE = 0o600


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename, fsync the directory: the file is either old or new, never torn."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise disk_error(path, exc) from None


CHECKSUM_FIELD = "_xxh3"


def _checksum(data: dict) -> str:
    return xxhash.xxh3_64_hexdigest(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


def _corrupt(path: Path, why: str) -> BadInput:
    return BadInput(f"ledger {path} is corrupt ({why})",
                    f"do not edit ledgers; move {path.name} aside and rerun the stage: it starts that stage afresh")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_error(path: Path, exc: OSError) -> RuntimeFailure:
    """A write failure as an operator reads it: full disk and permissions get their own hints."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return RuntimeFailure(f"cannot write {path}: {os.strerror(exc.errno)}",
                              "free disk space in the run directory (or use a larger volume), then rerun the "
                              "same command: it resumes from the last durable segment")
    return RuntimeFailure(f"cannot write {path}: {exc.strerror or exc}",
                          "check the run directory's permissions and free space, then rerun to resume")


class LedgerCounts:
    """to_dict/from_dict/add for the counts dataclasses kept in ledgers, whose `skipped` is a Counter by reason."""

    SKIPPED_KEYS_KEPT = 1000

    def add(self, other: "LedgerCounts") -> None:
        """Sum the counters; keep the first skipped keys by name, once each."""
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if isinstance(mine, Counter):
                mine.update(theirs)
            elif isinstance(mine, list):
                room = self.SKIPPED_KEYS_KEPT - len(mine)
                mine.extend([entry for entry in theirs if entry not in mine][:max(room, 0)])
            else:
                setattr(self, item.name, mine + theirs)

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**{**data, "skipped": Counter(data["skipped"])})


class RunDir:
    """One migration's directory. Each stage reads what the previous one left durable."""

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if create:
            self._create()
        elif not self.path.is_dir():
            raise BadInput(f"run directory {self.path} does not exist",
                           "pass the --run-dir that dump (or run) created")

    def _create(self) -> None:
        try:
            self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(self.path, DIR_MODE)
            self.segments.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"cannot create run directory {self.path}: {exc.strerror}",
                           "choose a writable --run-dir on a volume with room for the dump") from None

    @property
    def segments(self) -> Path:
        return self.path / "segments"

    def read(self, name: str) -> dict | None:
        """A stage's ledger, or None when the stage never wrote one.

        A ledger carries a checksum of its content: a changed digit in a cursor is still valid JSON,
        and resuming from it would skip keys without a word. So a ledger whose checksum is missing or
        wrong is refused: it was edited, or it is not one that redis-migrate wrote."""
        path = self.path / f"{name}.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            raise _corrupt(path, "not valid JSON") from None
        except OSError as exc:
            raise BadInput(f"cannot read ledger {path}: {exc.strerror}", "check the run directory's permissions") from None
        if not isinstance(data, dict):
            raise _corrupt(path, "not a JSON object")
        check = data.pop(CHECKSUM_FIELD, None)
        if check != _checksum(data):
            raise _corrupt(path, "checksum mismatch: it was changed after it was written" if check is not None
                           else "it has no checksum: it was edited, or not written by redis-migrate")
        return data

    def write(self, name: str, data: dict) -> None:
        body = {key: value for key, value in data.items() if key != CHECKSUM_FIELD}
        sealed = {**body, CHECKSUM_FIELD: _checksum(body)}
        atomic_write(self.path / f"{name}.json", json.dumps(sealed, indent=1, sort_keys=True).encode())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run lock; a second process working on the same dir is refused."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise BadInput(f"run directory {self.path} is locked by pid {holder}",
                               "wait for that run to finish, or stop it; a killed run releases the lock itself") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    def bind(self, role: str, identity: dict) -> None:
        """Tie the run dir to a source or target; refuse a run dir made for a different one."""
        run = self.read("run") or {"created": time.time()}
        known = run.get(role)
        if known is not None and known != identity:
            raise BadInput(f"run directory {self.path} was made for {role} {known}, not {identity}",
                           f"use a new --run-dir for this {role}, or the {role} this run dir was made for")
        if known is None:
            run[role] = identity
            self.write("run", run)
