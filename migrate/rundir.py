"""The run directory: one checksummed JSON ledger per stage, the run lock, and what ties the dir to its endpoints.

Each ledger is read and written through its own class below; no other module knows its keys.

Layout (0700, files 0600):
    run.json             RunLedger: the source and target this dir belongs to (identities, no secrets),
                         the databases left out on purpose (--ignore-other-dbs) and whether skipped keys
                         were accepted (--skip-unsupported), the hash slots it copies (--slots). No other options.
    plan.json            PlanLedger: `run`'s plan, recorded once (blockers, estimates)
    dump.json            DumpLedger: the dump's options and records per segment, per master its cursor, next
                         segment number, done flag and counts; the keys skipped and why; segments superseded
                         by a resume
    replay.json          ReplayLedger: segments done, counts, key counts per segment, witness keys of the
                         latest segments, target RDB version, how often the target lost confirmed keys
    verify.json          VerifyLedger: the last verify's result and time (the cutover gate reads it)
    verify-report.jsonl  every difference (and skipped key) of the last verify, one JSON object a line
                         (verify/stage.py; `verify --report PATH` writes it elsewhere)
    cutover.json         CutoverLedger: SSM values and versions before and after the cutover, its state
                         and the services redeployed
    segments/            immutable dump segments, m<master index, 3 digits>-<sequence, 8 digits>.seg
                         (datapath/store.py); the master index is its place in dump.json's `order`
    lock                 held (flock) by the process working on the run dir; holds its pid
    cutover.lock         held (flock) by a cutover on a running sync (which holds `lock`); holds its pid

Ledgers, the report and segments are written atomically (as .<name>.tmp-<pid>, fsynced, renamed; a leftover temp file
is ignored). Every ledger carries a checksum (`_xxh3`) of its content: an edited one is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import xxhash

from .errors import BadInput, RuntimeFailure
from .keynames import key_id, readable

DIR_MODE = 0o700
FILE_MODE = 0o600


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename, fsync the directory: the file is either old or new, never torn."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")  # two threads may save one file
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

    def add(self, other: LedgerCounts) -> None:
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
        # asdict would rebuild a Counter from its (key, count) pairs: counters are copied as dicts instead
        counters = {item.name: dict(getattr(self, item.name)) for item in fields(self)
                    if item.default_factory is Counter}
        return {**asdict(self), **counters}

    @classmethod
    def from_dict(cls, data: dict):
        counters = {item.name for item in fields(cls) if item.default_factory is Counter}
        return cls(**{name: Counter(value) if name in counters else value for name, value in data.items()})


def skipped_entry(key: bytes, reason: str) -> dict:
    """How a skipped key is named in ledgers and reports: readable (escaped, shortened), plus its exact
    identity, by which verify knows the key it finds missing was skipped on purpose."""
    return {"key": readable(key), "id": key_id(key), "reason": reason}


def skipped_reasons(entries: list[dict]) -> dict[str, str]:
    """Why each named skipped key was skipped, by key_id (entries written before ids were kept have none)."""
    return {entry["id"]: entry["reason"] for entry in entries if "id" in entry}


@dataclass
class DumpCounts(LedgerCounts):
    scanned: int = 0
    dumped: int = 0
    struct_keys: int = 0
    vanished: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)


@dataclass
class ReplayCounts(LedgerCounts):
    restored: int = 0
    struct_written: int = 0
    expired: int = 0
    retries: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_keys: list = field(default_factory=list)  # the first skipped keys by name, for the report
    not_held: Counter = field(default_factory=Counter)  # keys written without something the target cannot hold
    not_held_keys: list = field(default_factory=list)

    def skip(self, key: bytes, reason: str, limit: int = 1000) -> None:
        self.skipped[reason] += 1
        item = skipped_entry(key, reason)
        if len(self.skipped_keys) < limit and item not in self.skipped_keys:
            self.skipped_keys.append(item)

    def not_held_key(self, key: bytes, what: str, limit: int = 1000) -> None:
        """A key written without `what` (say a stream's entries-read on a Redis 6.2 target): named, never silent."""
        self.not_held[what] += 1
        item = skipped_entry(key, what)
        if len(self.not_held_keys) < limit and item not in self.not_held_keys:
            self.not_held_keys.append(item)


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
            raise BadInput(f"cannot read ledger {path}: {exc.strerror}",
                           "check the run directory's permissions") from None
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

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the run lock; a second process working on the same dir is refused."""
        return self._flock("lock", f"run directory {self.path} is locked by pid {{holder}}",
                           "wait for that run to finish, or stop it; a killed run releases the lock itself")

    def cutover_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held by a cutover on a running sync (the sync holds the run lock): two operators starting a live
        cutover at once would fence and flip twice; the second is refused."""
        return self._flock("cutover.lock", f"a cutover (pid {{holder}}) is already running on {self.path}",
                           "wait for it to finish and read its result (redis-migrate status); a killed cutover "
                           "releases the lock itself")

    @contextlib.contextmanager
    def _flock(self, name: str, refusal: str, hint: str) -> Iterator[None]:
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise BadInput(refusal.replace("{holder}", holder), hint) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    def bind(self, role: str, identity: dict) -> None:
        """Tie the run dir to a source or target; refuse a run dir made for a different one."""
        RunLedger.load(self).bind(role, identity)


# --- the ledgers: one class per file, the only code that knows its keys -------------------------------

class Ledger:
    """One JSON file of the run dir, read once, changed through the subclass's methods, saved whole."""

    NAME = ""

    def __init__(self, run_dir: RunDir, data: dict | None = None) -> None:
        self.run_dir = run_dir
        self.found = data is not None
        self._data = data if data is not None else self._empty()

    @classmethod
    def load(cls, run_dir: RunDir):
        """The ledger as the run dir holds it (`found` is False when the stage never wrote it)."""
        return cls(run_dir, run_dir.read(cls.NAME))

    def _empty(self) -> dict:
        return {}

    @property
    def path(self) -> Path:
        return self.run_dir.path / f"{self.NAME}.json"

    def save(self) -> None:
        self.run_dir.write(self.NAME, self._data)
        self.found = True

    def forget(self) -> None:
        """Remove the file: the stage starts afresh next time."""
        self.path.unlink(missing_ok=True)
        self.found = False
        self._data = self._empty()


class StageLedger(Ledger):
    """A stage's ledger with its start and end times."""

    @property
    def started_at(self) -> float | None:
        return self._data.get("started_at")

    @property
    def finished_at(self) -> float | None:
        return self._data.get("finished_at")

    @property
    def finished(self) -> bool:
        return "finished_at" in self._data

    @property
    def state(self) -> str:
        if self.finished:
            return "done"
        return "started" if self.started_at else "not started"

    @property
    def seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return round(self.finished_at - self.started_at, 2)
        return None


@dataclass(frozen=True)
class IgnoredDatabases:
    """The databases a one-database copy left behind on purpose (--ignore-other-dbs)."""

    db: int
    others: dict[str, int]  # db number (as text) -> keys
    at: float


class RunLedger(Ledger):
    """run.json: the endpoints this dir belongs to, and the operator's decisions that later gates read."""

    NAME = "run"

    def _empty(self) -> dict:
        return {"created": time.time()}

    def bind(self, role: str, identity: dict) -> None:
        """Tie the run dir to a source or target; refuse a run dir made for a different one."""
        known = self._data.get(role)
        if known is not None and known != identity:
            raise BadInput(f"run directory {self.run_dir.path} was made for {role} {known}, not {identity}",
                           f"use a new --run-dir for this {role}, or the {role} this run dir was made for")
        if known is None:
            self._data[role] = identity
            self.save()

    @property
    def skipped_accepted(self) -> bool:
        return bool(self._data.get("skipped_accepted"))

    def accept_skipped(self, accepted: bool) -> None:
        """Record whether the copy's skipped keys were accepted (--skip-unsupported), for the cutover gate."""
        if self._data.get("skipped_accepted", False) != accepted:
            self._data["skipped_accepted"] = accepted
            self.save()

    @property
    def ignored_databases(self) -> IgnoredDatabases | None:
        ignored = self._data.get("ignored_databases")
        return IgnoredDatabases(ignored["db"], dict(ignored["others"]), ignored["at"]) if ignored else None

    def ignore_databases(self, db: int, others: dict[int, int]) -> None:
        self._data["ignored_databases"] = {"db": db, "others": {str(n): k for n, k in others.items()},
                                           "at": time.time()}
        self.save()

    def describe(self) -> dict:
        """The whole record, for `status`."""
        return dict(self._data) if self.found else {}

    @property
    def slots(self) -> str | None:
        """The hash slots this run dir copies (--slots, as "A-B" text); None: all of them."""
        return self._data.get("slots")

    def bind_slots(self, slots: str | None) -> None:
        """A run dir copies one slot range for its whole life: a rerun with other --slots is refused."""
        known = self._data.get("slots", "unset") if self.found else "unset"
        if known == "unset":
            self._data["slots"] = slots
            self.save()
        elif known != slots:
            raise BadInput(f"run directory {self.run_dir.path} copies slots {known or 'all (no --slots)'}, "
                           f"not {slots or 'all (no --slots)'}",
                           "rerun with the run dir's own --slots, or use a new --run-dir for other slots")


class PlanLedger(Ledger):
    """plan.json: the plan `run` made before its first stage, kept once per run dir."""

    NAME = "plan"

    def record(self, plan: dict) -> None:
        self._data = plan
        self.save()

    @property
    def plan(self) -> dict:
        return self._data

    @property
    def blockers(self) -> list[dict]:
        return self._data.get("blockers", [])


class MasterProgress:
    """One source master's place in the dump (its part of dump.json)."""

    def __init__(self, data: dict) -> None:
        self._data = data

    @property
    def cursor(self) -> int:
        return self._data["cursor"]

    @property
    def next_seq(self) -> int:
        """The first segment number that the cursor does not cover."""
        return self._data["next_seq"]

    @property
    def done(self) -> bool:
        return self._data["done"]

    @property
    def counts(self) -> DumpCounts:
        return DumpCounts.from_dict(self._data["counts"])

    def checkpoint(self, cursor: int, next_seq: int, finished: bool, pending: DumpCounts) -> None:
        """The cursor and the first segment number it does not cover move together, with the counts."""
        counts = self.counts
        counts.add(pending)
        self._data.update(cursor=cursor, next_seq=next_seq, done=finished, counts=counts.to_dict())


class DumpLedger(StageLedger):
    """dump.json: the dump's options, per master cursor, next segment number and counts; plus the keys
    skipped and why, and the segments a resumed dump superseded."""

    NAME = "dump"

    def __init__(self, run_dir: RunDir, data: dict | None = None) -> None:
        super().__init__(run_dir, data)
        self.names = list(self._data.get("masters", {}))

    @property
    def options(self) -> dict | None:
        """The fingerprint of the options the dump was made with."""
        return self._data.get("options")

    @property
    def struct_all(self) -> bool:
        return bool((self.options or {}).get("struct_all"))

    @property
    def scanned_any(self) -> bool:
        return any(m["counts"]["scanned"] for m in self._data.get("masters", {}).values())

    @property
    def segment_records(self) -> int | None:
        """Records per segment the dump was started with (--segment-records); None before it started, or in a
        run dir from before the option (whose dump used the default)."""
        return self._data.get("segment_records")

    def keep_segment_records(self, records: int) -> None:
        """Record the segment size: a resumed dump goes on with it (in memory until saved)."""
        self._data["segment_records"] = records

    def restart(self, options: dict) -> None:
        """A new dump with these options (in memory until saved)."""
        self._data = {"options": options, "masters": {}, "skipped_keys": [], "started_at": time.time()}

    def add_masters(self, names: list[str]) -> None:
        """The masters this dump reads; a new one starts at cursor 0. Their order numbers the segments."""
        order = self._data["order"] = self._data.get("order") or list(names)
        for name in names:
            if name not in order:
                order.append(name)
            self._data["masters"].setdefault(name, {"cursor": 0, "next_seq": 0, "done": False,
                                                    "counts": DumpCounts().to_dict()})
        self.names = list(names)

    def index(self, name: str) -> int:
        return self._data["order"].index(name)

    def master(self, name: str) -> MasterProgress:
        return MasterProgress(self._data["masters"][name])

    def supersede(self, segment_names: list[str]) -> None:
        """Segments written past the last checkpoint, whose keys are read again: replay still applies them
        (harmless, and in order), but its key counts leave them out, so a resumed run counts each key once."""
        if segment_names:
            names = self._data.setdefault("superseded", [])
            names.extend(name for name in segment_names if name not in names)
            self.save()

    @property
    def superseded(self) -> list[str]:
        return self._data.get("superseded", [])

    def record_skipped(self, skipped: list[tuple[bytes, str]], limit: int = LedgerCounts.SKIPPED_KEYS_KEPT) -> None:
        """Keep the first skipped keys by name (escaped), so the report can name them."""
        kept = self._data.setdefault("skipped_keys", [])
        room = limit - len(kept)
        kept.extend(skipped_entry(key, reason) for key, reason in skipped[:max(room, 0)])

    @property
    def skipped_keys(self) -> list[dict]:
        return self._data.get("skipped_keys", [])

    def totals(self) -> DumpCounts:
        """The counts of every master, added up."""
        total = DumpCounts()
        for master in self._data.get("masters", {}).values():
            total.add(DumpCounts.from_dict(master["counts"]))
        return total

    @property
    def done(self) -> bool:
        return all(self._data["masters"][name]["done"] for name in self.names)

    def save(self) -> None:
        if self.done and "finished_at" not in self._data:
            self._data["finished_at"] = time.time()
        super().save()

    def merge(self, share: dict) -> None:
        """Take in a worker's DumpShare: one master's progress, its superseded segments, its skipped keys."""
        self._data["masters"][share["master"]] = share["progress"]
        names = self._data.setdefault("superseded", [])
        names.extend(name for name in share["superseded"] if name not in names)
        kept = self._data.setdefault("skipped_keys", [])
        kept.extend(share["skipped_keys"][:max(LedgerCounts.SKIPPED_KEYS_KEPT - len(kept), 0)])


class DumpShare(DumpLedger):
    """A dump worker's copy of dump.json, for one master (workers.py): its save() sends that master's part to
    the parent, dump.json's only writer, which merges it (DumpLedger.merge). A worker killed between its
    segment and the parent's save leaves the checkpoint where it was: the resume reads those keys again."""

    def __init__(self, ledger: DumpLedger, name: str, send) -> None:
        super().__init__(ledger.run_dir, json.loads(json.dumps(ledger._data)))
        self.name, self._send = name, send
        self._skipped_sent = len(self.skipped_keys)

    def save(self) -> None:
        kept = self.skipped_keys
        self._send({"master": self.name, "progress": self._data["masters"][self.name],
                    "superseded": list(self.superseded), "skipped_keys": kept[self._skipped_sent:]})
        self._skipped_sent = len(kept)


class ReplayLedger(StageLedger):
    """replay.json: which segments are done, the counts (in all and per segment), and the witness keys of
    the latest segments. Written after each confirmed segment."""

    NAME = "replay"
    WITNESS_SEGMENTS_KEPT = 64  # a total loss shows in any of them, a partial one in the most recent

    def __init__(self, run_dir: RunDir, data: dict | None = None) -> None:
        super().__init__(run_dir, data)
        self.done = set(self._data.get("segments_done", []))
        self.counts = ReplayCounts.from_dict(self._data.get("counts") or ReplayCounts().to_dict())

    def _empty(self) -> dict:
        return {"segments_done": [], "counts": ReplayCounts().to_dict()}

    @property
    def started(self) -> bool:
        return "started_at" in self._data

    @property
    def target_rdb(self) -> int | None:
        return self._data.get("target_rdb")

    def start(self, target_rdb: int) -> None:
        self._data["started_at"] = time.time()
        self._data["target_rdb"] = target_rdb
        self.save()

    def finish(self) -> None:
        """The replay has written everything a finished dump holds."""
        if not self.finished:
            self._data["finished_at"] = time.time()
            self.save()

    def mark_done(self, name: str, witnesses: list | None = None, keys: ReplayCounts | None = None) -> None:
        """A segment confirmed, with its key counts (so that a superseded segment can be left out of them)
        and its witnesses ([[key hex, expire_at], ...])."""
        self.done.add(name)
        self._data["segments_done"] = sorted(self.done)
        if keys is not None:
            self._data.setdefault("keys_by_segment", {})[name] = [keys.restored, keys.struct_written, keys.expired]
        self._remember(name, witnesses or [])
        self.save()

    def _remember(self, segment: str, witnesses: list[list]) -> None:
        """Add a done segment's witnesses, keeping the latest WITNESS_SEGMENTS_KEPT segments."""
        kept = self._data.setdefault("witnesses", {})
        kept.pop(segment, None)
        if witnesses:
            kept[segment] = witnesses
        for name in list(kept)[:-self.WITNESS_SEGMENTS_KEPT]:
            del kept[name]

    @property
    def witnesses(self) -> list[list]:
        """Every kept witness, [key hex, expire_at], of the latest done segments."""
        return [item for items in self._data.get("witnesses", {}).values() for item in items]

    @property
    def keys_by_segment(self) -> dict[str, list[int]]:
        """Per done segment: [restored, struct_written, expired]."""
        return self._data.get("keys_by_segment", {})

    @property
    def target_losses(self) -> int:
        return self._data.get("target_losses", 0)

    def forget_done(self) -> None:
        """The target lost keys it had confirmed: every segment is written again, counts start over."""
        self.done = set()
        self._data.update(segments_done=[], witnesses={}, keys_by_segment={}, target_losses=self.target_losses + 1)
        self.counts = ReplayCounts(retries=self.counts.retries)
        self.save()

    def restart(self) -> None:
        """--redo: forget every segment and count, but keep the start mark (the target, which this run dir
        wrote to, is not refused as non-empty) and the target's RDB version."""
        keep = {key: self._data[key] for key in ("started_at", "target_rdb") if key in self._data}
        self._data = {**self._empty(), **keep}
        self.done, self.counts = set(), ReplayCounts()
        self.save()

    def save(self) -> None:
        self._data["counts"] = self.counts.to_dict()
        super().save()

    def merge(self, share: dict) -> None:
        """Take in a replay worker's ReplayShare: segments confirmed, their key counts and witnesses, and
        the counts they added."""
        self.done.update(share["done"])
        self._data["segments_done"] = sorted(self.done)
        self._data.setdefault("keys_by_segment", {}).update(share["keys_by_segment"])
        for name in share["done"]:
            self._remember(name, share["witnesses"].get(name, []))
        self.counts.add(ReplayCounts.from_dict(share["counts"]))


class ReplayShare(ReplayLedger):
    """A replay worker's copy of replay.json (workers.py): save() sends what it confirmed since its last save
    to the parent, replay.json's only writer (ReplayLedger.merge). `counts` holds only what it added."""

    def __init__(self, ledger: ReplayLedger, send) -> None:
        super().__init__(ledger.run_dir, json.loads(json.dumps(ledger._data)))
        self.counts = ReplayCounts()
        self._send, self._sent = send, set(self.done)

    def save(self) -> None:
        new = sorted(self.done - self._sent)
        kept, by_segment = self._data.get("witnesses", {}), self.keys_by_segment
        self._send({"done": new, "keys_by_segment": {name: by_segment[name] for name in new if name in by_segment},
                    "witnesses": {name: kept[name] for name in new if name in kept}, "counts": self.counts.to_dict()})
        self._sent.update(new)
        self.counts = ReplayCounts()


@dataclass(frozen=True)
class VerifyVerdict:
    """What the cutover gate needs of the last verify."""

    finished_at: float
    equal: bool
    differences: int
    sample: int | None
    target_address: tuple[str, int]  # host (lower case), port
    skipped: int                     # missing keys that the copy skipped on purpose


class VerifyLedger(StageLedger):
    """verify.json: the last verify's result, as `verify --json` reports it."""

    NAME = "verify"

    def record(self, result: dict) -> None:
        self._data = dict(result)
        self.save()

    @property
    def result(self) -> dict:
        return self._data

    @property
    def equal(self) -> bool:
        return self._data.get("equal") is True

    @property
    def differences(self) -> int | None:
        return self._data.get("differences")

    def passed_since(self, moment: float) -> bool:
        """An equal verify that finished at or after `moment` (e.g. the replay's end)."""
        return self.found and self.equal and (self.finished_at or 0) >= moment

    def verdict(self) -> VerifyVerdict | None:
        """The gate's facts, or None when the file lacks one (incomplete, or not what verify writes)."""
        try:
            checked = urlsplit(self._data["target"])
            return VerifyVerdict(finished_at=float(self._data["finished_at"]), equal=self.equal,
                                 differences=int(self._data["differences"]), sample=self._data.get("sample"),
                                 target_address=((checked.hostname or ""), checked.port or 6379),
                                 skipped=int((self._data.get("skipped") or {}).get("keys", 0)))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass
class CutoverRecord:
    """cutover.json: what a rollback restores and what the cutover wrote (set by a cutover, kept by a
    rollback), plus the latest switch's state and redeploys. Fields that are None are not written."""

    env: str | None = None
    parameters: dict[str, str] | None = None       # key -> SSM parameter name
    state: str | None = None                       # <kind>-started, cut-over, rolled-back, <kind>-failed
    values_after: dict[str, str] | None = None     # what the latest switch makes the parameters hold
    redeployed: list[str] = field(default_factory=list)  # cluster/service, redeployed by the latest switch
    started_at: float | None = None
    last_run_id: str | None = None
    before: dict[str, dict] | None = None          # key -> {"value", "version"} in effect before the cutover
    cutover_values: dict[str, str] | None = None   # what the cutover wrote
    run_id: str | None = None                      # the cutover's run id
    holding: dict[str, str] | None = None          # after a failed switch: what each parameter holds
    error: str | None = None
    finished_at: float | None = None
    versions_after: dict[str, int | None] | None = None
    extra: dict = field(default_factory=dict)      # keys this version does not know, kept as they were

    def set_before(self, versions: dict[str, tuple[int, str]]) -> None:
        """The versions in effect before the cutover: key -> (version number, value)."""
        self.before = {key: {"value": value, "version": number} for key, (number, value) in versions.items()}

    def before_versions(self) -> dict[str, tuple[int, str]] | None:
        if self.before is None:
            return None
        return {key: (int(v["version"]), v["value"]) for key, v in self.before.items()}

    def to_dict(self) -> dict:
        own = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "extra"}
        return {**self.extra, **{key: value for key, value in own.items() if value is not None}}

    @classmethod
    def from_dict(cls, data: dict) -> CutoverRecord:
        known = {item.name for item in fields(cls)} - {"extra"}
        return cls(**{key: value for key, value in data.items() if key in known},
                   extra={key: value for key, value in data.items() if key not in known})


class CutoverLedger(Ledger):
    """cutover.json, written by cutover and rollback before and after each SSM write."""

    NAME = "cutover"

    @property
    def record(self) -> CutoverRecord | None:
        return CutoverRecord.from_dict(self._data) if self.found else None

    def keep(self, record: CutoverRecord) -> None:
        self._data = record.to_dict()
        self.save()
