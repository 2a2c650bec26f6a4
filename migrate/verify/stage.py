"""Verify: prove that the target holds what the source (or the dump) holds, list what differs, repair it.

The full check reads both sides at once, one worker process per master (fullscan.py), and folds a
canonical digest of every key (digest.py) into per-slot digests (slotdigest.py), keeping nothing per
key. Only the slots whose digests differ are read again, on both sides, and compared key by key
(descent.py). Every key found different is then read again on both sides, for
`rounds` rounds, before it is reported, because the source may still take writes:

    equal in some round             not a difference (it was in flight)
    gone on both sides              vanished (or expired, if it had a TTL): accounted, not a difference
    gone on one side, TTL due       expired: accounted, not a difference
    same as in the previous read    missing, extra, type, value or ttl: reported
    moved since the previous read   read again after a pause, up to `rounds` reads; then `changing`

A key found missing that the run dir's ledgers name as skipped by the copy (a name over 4 KiB, a
module type: see `skipped_on_purpose`) is counted and listed apart, as `skipped`, not as a difference.
Only keys named there are: a ledger keeps the first 1,000 names, and a missing key it does not name
stays a difference.

The result goes to `<run-dir>/verify.json` (the cutover gate reads it), the differences (and the
skipped keys) to a JSON lines report. `run_verify` raises nothing for differences: the command layer maps
"not equal" to exit 1.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import BadInput
from ..events import ProgressFactory, no_progress
from ..keynames import key_id
from ..net.endpoints import Topology, translated_errors
from ..net.keyspace import NO_EXPIRY, SlotRanges
from ..net.wire import pack
from ..rundir import DumpLedger, ReplayLedger, RunDir, VerifyLedger, atomic_write, skipped_reasons
from .compare import EXPIRED, KINDS, Difference, Pass, classify, compare_views, moved, now_ms
from .descent import SlotLister, descend
from .fullscan import ScanJob, SideScans, combined
from .readers import NO_DETAIL, Detail, SideReader, View

REPORT_NAME = "verify-report.jsonl"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class VerifyOptions:
    sample: int | None = None          # check N random keys instead of all
    ttl_tolerance_ms: int = 2000       # clock skew plus the time between the two sides' reads
    rounds: int = 3                    # re-reads of the differing keys before they are reported
    round_interval: float = 0.5        # seconds between rounds, so that in-flight writes land
    report: Path | None = None         # default: <run-dir>/verify-report.jsonl
    repair: bool = False
    delete_extra: bool = False
    against_dump: bool = False
    dump_source: object = None         # with against_dump: an archive's segments (cloud/archive.py), not the run dir's
    db: int | None = None              # source db; default the source URL's
    listed: int = 20                   # differences kept in the result (the report has them all)
    slots: SlotRanges | None = None    # --slots: compare only keys in these hash slots, on both sides
    workers: int | None = None         # --workers: scan processes at once (None: one per master of each side)


@dataclass
class VerifyResult:
    equal: bool
    differences: int
    kinds: dict[str, int]
    first: list[dict]
    counts: dict
    sample: int | None
    source: str
    target: str
    seconds: float
    finished_at: float
    report: str | None = None
    repaired: dict | None = None
    skipped: dict | None = None        # keys the copy skipped on purpose: count, reasons, the first ones

    def to_dict(self) -> dict:
        return {"finished_at": self.finished_at, "equal": self.equal, "differences": self.differences,
                "sample": self.sample, "source": self.source, "target": self.target, "counts": self.counts,
                "seconds": round(self.seconds, 3), "kinds": self.kinds, "first_differences": self.first,
                "report": self.report, "repaired": self.repaired, "skipped": self.skipped}


class Reference(Protocol):
    """The side the target must match: the live source, or the dump in the run dir."""

    label: str

    def read(self, keys: list[bytes]) -> dict[bytes, View]: ...

    def sample(self, count: int) -> list[bytes]: ...

    def records(self, keys: list[bytes], target_rdb: int) -> list: ...

    def close(self) -> None: ...


# --- the source as reference -------------------------------------------------------------------

class SourceReference:
    """The live source: keys are read on the master that owns them."""

    def __init__(self, topology: Topology, db: int, detail: Detail = NO_DETAIL) -> None:
        self.topology = topology
        self.db = db
        self.label = topology.endpoint.redacted
        self.reader = SideReader(topology, db, detail=detail)

    def read(self, keys: list[bytes]) -> dict[bytes, View]:
        with translated_errors(self.topology.endpoint):
            return self.reader.read(keys)

    def sample(self, count: int) -> list[bytes]:
        with translated_errors(self.topology.endpoint):
            return self.reader.sample(count)

    def records(self, keys: list[bytes], target_rdb: int):
        """The keys as dump records (DUMP payloads, or struct chunks where the target is older),
        read by the data path itself, so that repair copies exactly as replay does."""
        from ..datapath.reader import DumpOptions, read_records
        with translated_errors(self.topology.endpoint):
            records, _ = read_records(self.topology, keys, DumpOptions(db=self.db, target_rdb=target_rdb))
        return records

    def close(self) -> None:
        self.reader.close()


# --- passes: which keys differ at first sight ----------------------------------------------------

def full_pass(source: Topology, target: Topology, db: int, options: VerifyOptions, progress: Progress | None,
              slots: Collection[int] | None = None) -> Pass:
    """Both sides folded into per-slot digests at once, one process per master (nothing kept per key);
    then only the slots whose digests differ are read again and compared key by key (descent.py).
    `slots` limits the whole check to those slots (None: all)."""
    grid = max(options.ttl_tolerance_ms, 1)
    detail = Detail.shared(source, target)
    jobs = {"source": [ScanJob(source.endpoint, node, source.has_pexpiretime, grid, db, detail=detail, slots=slots)
                       for node in source.masters],
            "target": [ScanJob(target.endpoint, node, target.has_pexpiretime, grid, detail=detail, slots=slots)
                       for node in target.masters]}
    with SideScans(jobs, options.workers) as scans:
        done = scans.totals(progress)
    digests = {side: combined([result.digests for result in done[side]]) for side in jobs}
    differing = digests["source"].differing(digests["target"], slots)
    reference, other = SlotLister(source, db, detail), SlotLister(target, detail=detail)
    try:
        found = descend(reference, other, differing, digests, options.ttl_tolerance_ms)
    finally:
        reference.close()
        other.close()
    counts = {side: digests[side].counts({r.node: r.keys for r in done[side]}) for side in jobs}
    return Pass(found.candidates, dict(counts, slots_compared_by_key=len(differing)), found.expired, found.vanished)


def sample_pass(reference: Reference, target: SideReader, count: int, tolerance_ms: int) -> Pass:
    """N random keys from each side (RANDOMKEY, weighted by each master's size), read on both."""
    with translated_errors(target.topology.endpoint):
        keys = list(dict.fromkeys(reference.sample(count) + target.sample(count)))
        ref, tgt = reference.read(keys), target.read(keys)
    return Pass(compare_views(ref, tgt, tolerance_ms), {"sampled": len(keys)})


# --- rounds: settle what differs -------------------------------------------------------------------

@dataclass
class Settled:
    differences: list[Difference]
    expired: int = 0
    vanished: int = 0
    skipped: list[tuple[Difference, str]] = field(default_factory=list)  # (missing key, why the copy skipped it)


def settle(reference: Reference, target: SideReader, candidates: dict[bytes, tuple[View, View]],
           options: VerifyOptions) -> Settled:
    """Re-read the differing keys on both sides before reporting them; see the module docstring.

    A key that reads the same as last time (`round_interval` ago) is settled: it is reported as it is.
    Only keys that moved are read again, up to `rounds` reads; one still moving then is `changing`.
    """
    settled = Settled([])
    pending = dict(candidates)
    for _ in range(max(options.rounds, 1)):
        if not pending:
            break
        time.sleep(options.round_interval)  # the first read too: descent read the candidates a moment ago
        keys = list(pending)
        ref = reference.read(keys)
        with translated_errors(target.topology.endpoint):
            tgt = target.read(keys)
        pending = settle_round(pending, ref, tgt, now_ms(), options.ttl_tolerance_ms, settled)
    return finish_settling(settled, pending)


def judged(pairs: dict[bytes, tuple[View, View]], tolerance_ms: int) -> list[Difference]:
    """The differences of keys read once, as `settle` would report them, without its re-reads: for a caller that
    acts on each difference at once (bring-back's rounds copy what differs now; the next round sees what moved)."""
    settled = Settled([])
    views = {key: pair[0] for key, pair in pairs.items()}, {key: pair[1] for key, pair in pairs.items()}
    settle_round(pairs, *views, now_ms(), tolerance_ms, settled)
    return finish_settling(settled, {}).differences


def settle_round(pending: dict[bytes, tuple[View, View]], ref: dict[bytes, View], tgt: dict[bytes, View],
                 now: int, tolerance: int, settled: Settled) -> dict[bytes, tuple[View, View]]:
    """One round's judgement of the keys read again (ref, tgt) against their previous reads (pending):
    settled keys go to `settled`; the keys that moved since are returned, to be read again."""
    moving: dict[bytes, tuple[View, View]] = {}
    for key, (before_ref, before_tgt) in pending.items():
        pair = (ref[key], tgt[key])
        kind = classify(*pair, now, tolerance)
        if kind is None and not pair[0].present:
            had_ttl = before_ref.expire_at != NO_EXPIRY or before_tgt.expire_at != NO_EXPIRY
            settled.expired += had_ttl
            settled.vanished += not had_ttl
        elif kind == EXPIRED:
            settled.expired += 1
        elif kind is not None:
            if moved(before_ref, pair[0], tolerance) or moved(before_tgt, pair[1], tolerance):
                moving[key] = pair
            else:
                settled.differences.append(Difference(key, kind, *pair))
    return moving


def finish_settling(settled: Settled, still_moving: dict[bytes, tuple[View, View]]) -> Settled:
    """Keys still moving after the last round are `changing`; differences are listed by kind, then key."""
    settled.differences += [Difference(key, "changing", *pair) for key, pair in still_moving.items()]
    settled.differences.sort(key=lambda d: (KINDS.index(d.kind), d.key))
    return settled


# --- repair ------------------------------------------------------------------------------------------

def repair(reference: Reference, target: Topology, differences: list[Difference], options: VerifyOptions) -> dict:
    """Recopy every differing key from the reference as replay would; delete extras only if asked."""
    from ..datapath.replay import ReplayCounts, ReplayOptions, TargetWriter
    recopy = [d.key for d in differences if d.kind != "extra"]
    extras = [d.key for d in differences if d.kind == "extra"]
    counts = ReplayCounts()
    with translated_errors(target.endpoint):
        writer = TargetWriter(target, ReplayOptions(allow_nonempty_target=True))
        try:
            records = reference.records(recopy, writer.target_rdb) if recopy else []
            writer.write(records, counts)
        finally:
            writer.close()
        deleted = delete_keys(target, extras) if options.delete_extra else 0
    return {"recopied": counts.restored + counts.struct_written, "deleted": deleted,
            "expired": counts.expired, "extra_kept": 0 if options.delete_extra else len(extras)}


def delete_keys(topology: Topology, keys: list[bytes]) -> int:
    """DEL each key on the master that owns it; returns how many existed."""
    reader = SideReader(topology)
    deleted = 0
    try:
        for index, group in reader.by_owner(keys).items():
            wire = reader.reader(index).wire
            wire.send(b"".join(pack(b"DEL", key) for key in group))
            deleted += sum(r for r in wire.read(len(group)) if isinstance(r, int))
    finally:
        reader.close()
    return deleted


# --- the whole verify ----------------------------------------------------------------------------------

def run_verify(source: Topology | None, target: Topology, run_dir: RunDir | None, options: VerifyOptions,
               progress: ProgressFactory = no_progress) -> VerifyResult:
    """Compare, settle, optionally repair, then write the report and `verify.json`. Never raises for
    differences; BadInput for a missing source/run dir, RuntimeFailure when a side fails mid-way.

    `progress("verify", total)` gives the bar: keys read on both sides, out of `progress_total`."""
    started = time.monotonic()
    reference = _reference(source, target, run_dir, options)
    target_reader = SideReader(target, detail=Detail.shared(source, target) if source and not options.against_dump
                               else NO_DETAIL)
    repaired = None
    try:
        with progress("verify", progress_total(reference, target, run_dir, options)) as update:
            first = _first_pass(reference, target_reader, source, target, options, update)
        settled = set_apart(settle(reference, target_reader, first.candidates, options), skipped_on_purpose(run_dir))
        if options.repair and settled.differences:
            repaired = repair(reference, target, settled.differences, options)
            repaired["found"] = len(settled.differences)
            again = settle(reference, target_reader, _fresh(reference, target_reader, settled.differences), options)
            settled = Settled(again.differences, settled.expired + again.expired, settled.vanished + again.vanished,
                              settled.skipped)
    finally:
        reference.close()
        target_reader.close()
    counts = dict(first.counts, expired=settled.expired + first.expired, vanished=settled.vanished + first.vanished)
    report = _report_path(run_dir, options)
    if report:
        write_report(report, settled.differences, settled.skipped)
    result = _result(settled, counts, reference.label, target, options, report, repaired, started)
    if run_dir is not None:
        VerifyLedger(run_dir).record(result.to_dict())
    return result


def _first_pass(reference: Reference, target_reader: SideReader, source: Topology | None, target: Topology,
                options: VerifyOptions, update: Progress) -> Pass:
    if options.sample:
        return sample_pass(reference, target_reader, options.sample, options.ttl_tolerance_ms)
    if isinstance(reference, SourceReference):
        return full_pass(source, target, reference.db, options, update, options.slots)
    return reference.full_pass(options.ttl_tolerance_ms, update)


def progress_total(reference: Reference, target: Topology, run_dir: RunDir | None, options: VerifyOptions
                   ) -> int | None:
    """What the full pass reads, in keys: the reference's (source DBSIZE, or the dump's records) plus the
    target's DBSIZE. None for a sample, which reads too few to need a bar."""
    if options.sample:
        return None
    if isinstance(reference, SourceReference):
        reference_keys = reference.topology.key_count(reference.db)
    elif options.dump_source is not None:
        reference_keys = options.dump_source.expected_keys
    else:
        dumped = DumpLedger.load(run_dir).totals()
        reference_keys = dumped.dumped + dumped.struct_keys
    return reference_keys + target.key_count()


def skipped_on_purpose(run_dir: RunDir | None) -> dict[str, str]:
    """Why the copy skipped each key the run dir's ledgers name (dump's and replay's), by key_id. The
    operator accepts these with --skip-unsupported; the cutover gate checks that they did."""
    if run_dir is None:
        return {}
    return skipped_reasons(DumpLedger.load(run_dir).skipped_keys + ReplayLedger.load(run_dir).counts.skipped_keys)


def set_apart(settled: Settled, skipped: dict[str, str]) -> Settled:
    """Missing keys that the copy skipped on purpose are not differences; they are listed apart."""
    if not skipped:
        return settled
    kept = []
    for difference in settled.differences:
        reason = skipped.get(key_id(difference.key)) if difference.kind == "missing" else None
        if reason is None:
            kept.append(difference)
        else:
            settled.skipped.append((difference, reason))
    settled.differences = kept
    return settled


def _reference(source: Topology | None, target: Topology, run_dir: RunDir | None, options: VerifyOptions) -> Reference:
    if options.against_dump and options.dump_source is not None:
        from .against_dump import DumpReference
        return DumpReference(run_dir, target, options.dump_source)
    if options.against_dump:
        if run_dir is None:
            raise BadInput("--against-dump needs --run-dir: the dump in it is the reference",
                           "pass the --run-dir that dump (or run) wrote")
        from .against_dump import DumpReference
        return DumpReference(run_dir, target)
    if source is None:
        raise BadInput("verify needs --source (or --against-dump with --run-dir)",
                       "give the source URL to compare against, or --against-dump to use the run dir's dump")
    return SourceReference(source, source.endpoint.db if options.db is None else options.db,
                           Detail.shared(source, target))


def _fresh(reference: Reference, target: SideReader, differences: list[Difference]) -> dict[bytes, tuple[View, View]]:
    """After a repair the target changed on purpose: the rounds start from new reads, not the old views."""
    keys = [d.key for d in differences]
    ref = reference.read(keys)
    with translated_errors(target.topology.endpoint):
        tgt = target.read(keys)
    return {key: (ref[key], tgt[key]) for key in keys}


def _report_path(run_dir: RunDir | None, options: VerifyOptions) -> Path | None:
    if options.report is not None:
        return Path(options.report)
    return run_dir.path / REPORT_NAME if run_dir is not None else None


def write_report(path: Path, differences: list[Difference], skipped: list[tuple[Difference, str]] = ()) -> None:
    """One JSON line per difference, then per key skipped on purpose (kind `skipped`, with the reason),
    each with the full name; written atomically (a reader never sees half a report)."""
    now = now_ms()
    entries = [d.to_dict(now) for d in differences] + [_skipped_dict(d, reason, now) for d, reason in skipped]
    lines = [json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n" for entry in entries]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create the report's directory {path.parent}: {exc.strerror}",
                       "give --report a path in a writable directory") from None
    atomic_write(path, "".join(lines).encode())


def _skipped_dict(difference: Difference, reason: str, now: int) -> dict:
    return {**difference.to_dict(now), "kind": "skipped", "reason": reason}


def _result(settled: Settled, counts: dict, source_label: str, target: Topology,
            options: VerifyOptions, report: Path | None, repaired: dict | None, started: float) -> VerifyResult:
    differences = settled.differences
    kinds = Counter(d.kind for d in differences)
    now = now_ms()
    skipped = None
    if settled.skipped:
        skipped = {"keys": len(settled.skipped), "reasons": dict(Counter(reason for _, reason in settled.skipped)),
                   "first": [_skipped_dict(d, reason, now) for d, reason in settled.skipped[:options.listed]]}
    return VerifyResult(
        equal=not differences, differences=len(differences),
        kinds={kind: kinds[kind] for kind in KINDS if kinds[kind]},
        first=[d.to_dict(now) for d in differences[:options.listed]],
        counts=counts, sample=options.sample, source=source_label, target=target.endpoint.redacted,
        seconds=time.monotonic() - started, finished_at=time.time(),
        report=str(report) if report else None, repaired=repaired, skipped=skipped)
