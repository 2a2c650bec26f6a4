"""Dump: SCAN every source master, read each key with its absolute expiry (reader.py), write durable segments.

Each master has its MasterDumper; a writer thread compresses, writes and fsyncs its segments, then
the ledger, in order. The ledger's cursor moves only after the segment holding the keys scanned
before it is durable. A crash in between rescans from the old cursor into a segment with a new
number (the unrecorded one is marked superseded): harmless. A lost source connection is reopened,
and the scan goes on from the last checkpoint, for up to RECONNECT_SECONDS without progress.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

from ..backoff import Backoff
from ..errors import BadInput, RuntimeFailure, Unreachable
from ..net.endpoints import Node, Topology
from ..net.wire import Wire, pack
from ..rundir import DumpCounts, DumpLedger, DumpShare, MasterProgress, RunDir
from ..workers import default_workers, run_workers
from .reader import DumpOptions, KeyReader, text_of
from .segments import Record, SegmentWriter, seal
from .store import list_segments, segment_id, segment_path, write_segment

SEGMENT_RECORDS = 10_000  # the default of --segment-records: a checkpoint about every 10,000 keys
SEGMENT_BYTES = 16 << 20
RECONNECT_SECONDS = 120


class MasterDumper:
    """Scans one master from its checkpointed cursor and writes its segments."""

    def __init__(self, run_dir: RunDir, topology: Topology, index: int, node: Node, state: MasterProgress,
                 options: DumpOptions, ledger: DumpLedger) -> None:
        self.run_dir = run_dir
        self.index = index
        self.state = state
        self.options = options
        self.ledger = ledger
        self.endpoint, self.node = topology.endpoint, node
        self.reader = KeyReader(*self._connect(), topology, options)
        self.writer = SegmentWriter()
        self.pending = DumpCounts()
        self.segment_records = ledger.segment_records or SEGMENT_RECORDS
        # A segment written just before a crash may not be in the ledger yet; never reuse its number:
        # segments are immutable, and replay may already have applied it. Its keys are read again from the
        # checkpointed cursor, so the ledger marks it superseded: replay's counts leave it out.
        written = [seq for master, seq in map(segment_id, list_segments(run_dir)) if master == index]
        self._next_seq = max([state.next_seq, *(seq + 1 for seq in written)])
        self._supersede([seq for seq in written if seq >= state.next_seq])
        # Compressing, writing and fsyncing a segment, then the ledger, happen on a thread of their own,
        # in order, while this one keeps the source busy. Only that thread touches the ledger.
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment-writer")
        self._queued: list[Future] = []
        self._write_failed = False
        self._flushed_early = False  # a segment was flushed mid-batch: checkpoint at the batch's end

    def run(self, progress: Callable[[int], None]) -> None:
        try:
            self._run_reconnecting(progress)
        finally:
            self._disk.shutdown()  # queued writes finish first: what was read before a failure stays durable

    def _run_reconnecting(self, progress: Callable[[int], None]) -> None:
        """Scan to the end. A dropped or timed-out source connection is reopened, and the scan goes on
        from the last checkpoint (what was read since is read again), for up to RECONNECT_SECONDS
        without progress."""
        backoff, mark = None, None
        while True:
            try:
                self._run(progress)
                return self._settle()
            except (ConnectionError, TimeoutError, ssl.SSLError, Unreachable) as exc:
                error = exc
            self._settle()  # the checkpoint to go on from (and a full disk outranks a lost connection)
            since_checkpoint = list(range(self.state.next_seq, self._next_seq))
            self._in_background(partial(self._supersede, since_checkpoint))
            if mark != (self.state.cursor, self.state.next_seq):  # progress since the last drop
                mark, backoff = (self.state.cursor, self.state.next_seq), Backoff(RECONNECT_SECONDS)
            self.reader.skipped_keys, self.writer, self.pending = [], SegmentWriter(), DumpCounts()
            while True:
                self._close()
                if backoff.expired():
                    raise RuntimeFailure(f"lost the connection to source {self.node.name} and could not get it "
                                         f"back in {RECONNECT_SECONDS}s ({type(error).__name__}: {error})",
                                         "check the source's health and network path, then rerun the same "
                                         "command: it resumes from the last durable segment") from None
                backoff.wait()
                try:
                    self.reader.wire, self.reader.bulk = self._connect()
                    break
                except Unreachable as exc:  # still down: wait longer
                    error = exc

    def _supersede(self, seqs: list[int]) -> None:
        self.ledger.supersede([segment_path(self.run_dir, self.index, seq).name for seq in seqs])

    def _connect(self) -> tuple[Wire, Wire]:
        """Two connections: `wire` for SCAN and struct reads, `bulk` for the batch scripts."""
        return tuple(Wire(self.endpoint, self.node.host, self.node.port, self.options.db, renew=True)
                     for _ in range(2))

    def _close(self) -> None:
        self.reader.wire.close()
        self.reader.bulk.close()

    def _run(self, progress: Callable[[int], None]) -> None:
        """SCAN and send batch N+1 before storing batch N, so the server and this process work at once."""
        cursor = self.state.cursor
        scanning = not self.state.done
        in_flight = None
        while scanning or in_flight:
            batch = None
            if scanning:
                cursor, keys = self._scan(cursor)
                batch = (keys, self.reader.start(keys), cursor)
                scanning = cursor != 0
            if in_flight:
                self._store(*in_flight, progress)
            in_flight = batch
        self._close()

    def _store(self, keys: list[bytes], sent: bool, cursor: int, progress: Callable[[int], None]) -> None:
        self.reader.finish(keys, sent, self.pending, self)
        progress(len(keys))
        finished = cursor == 0
        if finished or self._flushed_early or self.writer.count >= self.segment_records:
            self._commit(self.pending, cursor, finished)
            self.pending = DumpCounts()

    # RecordSink: records go to the current segment, which is flushed early when big keys fill it.
    def add(self, record: Record) -> None:
        self.writer.add(record)
        self._flush_if_full()

    def add_dumps(self, keys: list[bytes], expiries: list[int], payloads: list[bytes]) -> None:
        if self.writer.holds_struct_of(keys):  # a key read again (SCAN may repeat): keep its order
            self._flush_segment()
        self.writer.add_dumps(keys, expiries, payloads)
        self._flush_if_full()

    def _flush_if_full(self) -> None:
        """A batch of big values is written out while it is read, so this process holds at most a
        segment and a round of DUMPs (plus the writer thread's two queued tasks)."""
        if self.writer.raw_bytes >= SEGMENT_BYTES:
            self._flush_segment()
            self._flushed_early = True

    def _flush_segment(self) -> None:
        """Write the segment without moving the cursor: a crash rescans the batch, and the repeated
        records are harmless (replay is idempotent, later segments win)."""
        if self.writer.count:
            body, count, seq = self.writer.body(), self.writer.count, self._next_seq
            self._next_seq += 1
            self._in_background(lambda: self._write_segment(seq, body, count))
        self.writer = SegmentWriter()

    def _write_segment(self, seq: int, body: bytes, count: int) -> None:  # on the writer thread
        write_segment(self.run_dir, self.index, seq, seal(body, count))

    def _in_background(self, task: Callable[[], None]) -> None:
        """Queue `task` on the writer thread. At most two tasks wait there, so memory stays bounded; an
        error of an earlier one (a full disk) is raised here."""
        while len(self._queued) >= 2:
            self._queued.pop(0).result()
        self._queued.append(self._disk.submit(self._unless_a_write_failed, task))

    def _unless_a_write_failed(self, task: Callable[[], None]) -> None:  # on the writer thread
        """After a failed write nothing queued behind it runs: a checkpoint must never pass a segment
        that did not reach the disk."""
        if self._write_failed:
            return
        try:
            task()
        except BaseException:
            self._write_failed = True
            raise

    def _settle(self) -> None:
        """Wait until every queued write is done; an error of one of them is raised here."""
        while self._queued:
            self._queued.pop(0).result()

    def _scan(self, cursor: int) -> tuple[int, list[bytes]]:
        args = [b"SCAN", b"%d" % cursor, b"COUNT", b"%d" % self.options.scan_count]
        if self.options.match:
            args += [b"MATCH", self.options.match.encode()]
        if len(self.options.types) == 1:
            args += [b"TYPE", self.options.types[0].encode()]
        next_cursor, keys = self.reader.wire.call(*args)
        if self.options.slots is not None:  # --slots: SCAN and keep the slots' keys (see dump())
            keys = self.options.slots.keep(keys)
        if len(self.options.types) > 1:
            keys = self._keep_types(keys)
        return int(next_cursor), keys

    def _keep_types(self, keys: list[bytes]) -> list[bytes]:
        self.reader.wire.send(b"".join(pack(b"TYPE", key) for key in keys))
        wanted = set(self.options.types)
        return [key for key, kind in zip(keys, self.reader.wire.read(len(keys))) if text_of(kind) in wanted]

    def _commit(self, pending: DumpCounts, cursor: int, finished: bool) -> None:
        """Segment first (durable), then the cursor that it covers: the writer thread keeps that order."""
        self._flush_segment()
        self._flushed_early = False
        skipped, self.reader.skipped_keys = self.reader.skipped_keys, []
        next_seq = self._next_seq
        self._in_background(lambda: self._checkpoint(pending, cursor, next_seq, finished, skipped))

    def _checkpoint(self, pending: DumpCounts, cursor: int, next_seq: int, finished: bool,
                    skipped: list) -> None:  # writer thread
        """The cursor and the first segment number it does not cover move together."""
        self.state.checkpoint(cursor, next_seq, finished, pending)
        self.ledger.record_skipped(skipped)
        self.ledger.save()


def _same_selection(recorded: dict | None, wanted: dict) -> bool:
    """A dump made without knowing the target (plain `dump`) can be resumed by `run`, which knows it:
    its payloads are kept, and replay refuses any that the target's RDB version cannot take."""
    if recorded is None:
        return False
    if recorded.get("target_rdb") is None:
        wanted = {**wanted, "target_rdb": None}
    return recorded == wanted


def open_ledger(run_dir: RunDir, topology: Topology, options: DumpOptions) -> DumpLedger:
    """The dump ledger to go on from; a new one when the run dir holds none, or one of other options that
    has not scanned a key yet. A dump of other options that has read keys is refused."""
    ledger = DumpLedger.load(run_dir)
    if not _same_selection(ledger.options, options.fingerprint()):
        if ledger.scanned_any:
            raise BadInput(f"run directory {run_dir.path} holds a dump made with other options ({ledger.options})",
                           "rerun with the same --db/--match/--type/--mode, or use a new --run-dir")
        ledger.restart(options.fingerprint())
    ledger.keep_segment_records(_segment_records(run_dir, ledger, options.segment_records))
    ledger.add_masters([node.name for node in topology.masters])
    return ledger


def _segment_records(run_dir: RunDir, ledger: DumpLedger, asked: int | None) -> int:
    """The segment size of this dump: the one it started with (a run dir from before --segment-records used
    the default), or the one asked for when nothing is scanned yet. A resume with another size is refused:
    the run dir keeps one size, so its segment count and checkpoints read the same whatever resumed it."""
    if not ledger.scanned_any:
        return asked or ledger.segment_records or SEGMENT_RECORDS
    recorded = ledger.segment_records or SEGMENT_RECORDS
    if asked is not None and asked != recorded:
        raise BadInput(f"run directory {run_dir.path} holds a dump started with --segment-records {recorded}, "
                       f"not {asked}", f"rerun with --segment-records {recorded} (or without the option), "
                                       "or use a new --run-dir")
    return recorded


def dump(run_dir: RunDir, topology: Topology, options: DumpOptions, progress: Callable[[int], None] = lambda n: None
         ) -> DumpLedger:
    """Dump every master that is not done yet, up to --workers of them at once, each in a process of its own.
    Safe to rerun: it continues from the checkpoints.

    --slots: a cluster master that owns none of the slots is not read at all; the others are SCANned and
    only the keys of those slots kept. SCAN rather than CLUSTER GETKEYSINSLOT per slot: the keys of a
    slot range are spread over the whole keyspace anyway, SCAN's cursor is the checkpoint that kill -9
    and resume already rely on, a standalone source has no slot commands, and GETKEYSINSLOT would
    cost two round trips per slot (16,384 in all) plus its own checkpoint format."""
    ledger = open_ledger(run_dir, topology, options)
    todo = []
    for node in topology.masters:
        state = ledger.master(node.name)
        if state.done:
            continue
        if options.slots is not None and topology.is_cluster and not options.slots.intersects(node.slots):
            state.checkpoint(0, state.next_seq, True, DumpCounts())  # none of its slots are asked for
        else:
            todo.append(node)
    workers = options.workers or default_workers()
    if workers > 1 and len(todo) > 1:
        _dump_in_workers(run_dir, topology, options, ledger, todo, progress, workers)
    else:
        for node in todo:
            MasterDumper(run_dir, topology, ledger.index(node.name), node, ledger.master(node.name), options,
                         ledger).run(progress)
    ledger.save()
    return ledger


def _dump_in_workers(run_dir: RunDir, topology: Topology, options: DumpOptions, ledger: DumpLedger,
                     nodes: list[Node], progress: Callable[[int], None], workers: int) -> None:
    """One process per master (workers.py); each sends its checkpoints here, where dump.json is written."""
    ledger.save()
    by_name = {node.name: node for node in nodes}

    def work(name: str, send) -> None:
        share = DumpShare(ledger, name, lambda part: send(("checkpoint", part)))
        dumper = MasterDumper(run_dir, topology, ledger.index(name), by_name[name], share.master(name), options,
                              share)
        dumper.run(lambda n: send(("progress", n)))

    def receive(message) -> None:
        kind, body = message
        if kind == "progress":
            progress(body)
        else:
            ledger.merge(body)
            ledger.save()

    run_workers(list(by_name), work, receive, workers, "dump")
