"""The copy stages as a command runs them: dump, replay and run's verify, each with its progress bar, and
`run`'s two processes. The command layer (commands.py) opens the endpoints and the run dir, takes the
lock and admits the source before it calls these; the ledger readers at the end (summarize, status,
redo, judge_skipped) answer from the run dir alone.

`run` dumps in a child process while the parent replays the segments as they land, so the two
stages use both cores; each keeps its own ledger, so either can be killed and resumed.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable

from .children import die_with_parent, raise_relayed, relay_errors
from .datapath import dump as dump_module
from .datapath import replay as replay_module
from .datapath.reader import DumpOptions
from .errors import BadInput, RuntimeFailure
from .events import ProgressFactory, Warn, no_progress, no_warning
from .net.endpoints import Topology, translated_errors
from .net.keyspace import SLOT_COUNT
from .rundir import CutoverLedger, DumpLedger, ReplayLedger, RunDir, RunLedger, VerifyLedger


def dump_stage(run_dir: RunDir, source: Topology, options: DumpOptions,
               progress: ProgressFactory = no_progress) -> dict:
    """Dump the source into the run dir's segments; the caller admitted the source (`commands.admit_source`)."""
    started = time.monotonic()
    total = expected_keys(source, options)
    with progress("dump", total) as update:
        with translated_errors(source.endpoint):
            ledger = dump_module.dump(run_dir, source, options, update)
    return {"dump": ledger.totals().to_dict(), "dump_done": ledger.done, "seconds": time.monotonic() - started}


def replay_stage(run_dir: RunDir, target: Topology, options: replay_module.ReplayOptions,
                 progress: ProgressFactory = no_progress, dump_running: Callable[[], bool] = lambda: False,
                 expected: int | None = None, warn: Warn = no_warning, archive=None) -> dict:
    """Replay what the dump holds; with `dump_running`, follow the dump as it writes (run). The caller
    bound the target to the run dir (`commands.bind_endpoints`). With `archive` (cloud/archive.py's
    ArchiveSegments) the segments come from S3 and the run dir holds only the replay's progress."""
    if archive is not None:
        return _replay_archive(run_dir, target, options, progress, warn, archive)
    dump_ledger = DumpLedger.load(run_dir)
    if not dump_ledger.found and not dump_running():
        raise BadInput(f"run directory {run_dir.path} holds no dump", "run `redis-migrate dump` (or `run`) first")
    if options.mode == "struct" and dump_ledger.found and not dump_ledger.struct_all:
        raise BadInput("--mode struct needs a dump made with --mode struct",
                       "dump again with --mode struct into a new --run-dir (or use `run --mode struct`)")
    started = time.monotonic()
    if expected is None:
        totals = dump_ledger.totals()
        expected = totals.dumped + totals.struct_keys
    done = ReplayLedger.load(run_dir).counts
    with progress("replay", expected or None, initial=done.restored + done.struct_written + done.expired) as update:
        with translated_errors(target.endpoint):
            ledger = replay_module.replay(run_dir, target, options, update, dump_running, warn)
    dump_done = bool(DumpLedger.load(run_dir).finished_at)
    if dump_done:
        ledger.finish()
    else:
        warn("the dump is not finished: replayed what it holds; rerun dump, then replay, to complete")
    return {"replay": ledger.counts.to_dict(), "replay_done": dump_done, "seconds": time.monotonic() - started}


def refuse_dump_dir(run_dir: RunDir) -> None:
    """replay --from keeps its progress in a run dir of its own: one holding a dump would mix two sources."""
    if DumpLedger.load(run_dir).found:
        raise BadInput(f"run directory {run_dir.path} holds a dump of its own",
                       "give replay --from a new --run-dir: it holds only the replay's progress")


def _replay_archive(run_dir: RunDir, target: Topology, options: replay_module.ReplayOptions,
                    progress: ProgressFactory, warn: Warn, archive) -> dict:
    """The same replay path, its segments streamed from an archive; the archive's manifest says what the dump held."""
    refuse_dump_dir(run_dir)
    if options.mode == "struct" and not archive.struct_all:
        raise BadInput("--mode struct needs a dump made with --mode struct",
                       "replay this archive with --mode auto, or archive a struct dump")
    started = time.monotonic()
    done = ReplayLedger.load(run_dir).counts
    with progress("replay", archive.expected_keys or None,
                  initial=done.restored + done.struct_written + done.expired) as update:
        with translated_errors(target.endpoint):
            ledger = replay_module.replay(run_dir, target, options, update, warn=warn, source=archive)
    if archive.dump_finished:
        ledger.finish()
    else:
        warn("the archived dump was not finished: replayed what it holds")
    return {"replay": ledger.counts.to_dict(), "replay_done": archive.dump_finished, "archive": archive.uri,
            "seconds": time.monotonic() - started}


def run_stages(run_dir: RunDir, source: Topology, target: Topology, dump_options: DumpOptions,
               replay_options: replay_module.ReplayOptions, progress: ProgressFactory = no_progress,
               warn: Warn = no_warning) -> dict:
    """Dump in a child process while this one replays; both resume from their ledgers. The caller has
    admitted the source (`commands.admit_source`) before anything, --redo included, changed the run dir."""
    started = time.monotonic()
    copy_stages(run_dir, source, target, dump_options, replay_options, progress, warn)
    copied = time.monotonic() - started
    verify_stage(run_dir, source, target, dump_options, progress)
    summary = summarize(run_dir)
    summary["verify"] = _verify_summary(VerifyLedger.load(run_dir).result)
    summary.update(seconds=round(time.monotonic() - started, 3), copy_seconds=round(copied, 3),
                   keys_per_s=round((summary["restored"] + summary["struct_written"]) / max(copied, 1e-9)))
    return summary


def expected_keys(source: Topology, options: DumpOptions) -> int:
    """The keys the dump will read, for the progress bar: with --slots, the slots' share of the source's."""
    total = source.key_count(options.db)
    return total if options.slots is None else round(total * len(options.slots) / SLOT_COUNT)


def copy_stages(run_dir: RunDir, source: Topology, target: Topology, dump_options: DumpOptions,
                replay_options: replay_module.ReplayOptions, progress: ProgressFactory = no_progress,
                warn: Warn = no_warning) -> None:
    """The copy of `run` and `sync`: dump in a child, replay here (one bar: the replay's)."""
    child, errors = _start_dump_process(run_dir, source, dump_options)
    try:
        replayed = replay_stage(run_dir, target, replay_options, progress, dump_running=child.is_alive,
                                expected=expected_keys(source, dump_options), warn=warn)
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
    _raise_child_error(child, errors)
    if not replayed["replay_done"]:
        replay_stage(run_dir, target, replay_options, warn=warn)


def verify_stage(run_dir: RunDir, source: Topology, target: Topology, dump_options: DumpOptions,
                 progress: ProgressFactory = no_progress) -> None:
    """`run`'s last stage. Skipped when a passing verify is newer than the replay; a dump limited by
    --match/--type is verified against the dump itself, since the source holds more than was copied."""
    from .verify.stage import VerifyOptions, run_verify
    if VerifyLedger.load(run_dir).passed_since(ReplayLedger.load(run_dir).finished_at or 0):
        return
    filtered = bool(dump_options.match or dump_options.types)
    options = VerifyOptions(db=dump_options.db, against_dump=filtered, slots=dump_options.slots,
                            workers=dump_options.workers)
    with translated_errors(target.endpoint):
        run_verify(None if filtered else source, target, run_dir, options, progress)


def _verify_summary(result: dict | None) -> dict:
    """The verify's result, less the per-side counts that the run's own counts already give."""
    if not result:
        return {}
    return {key: result.get(key) for key in ("equal", "differences", "kinds", "first_differences", "skipped",
                                             "report", "seconds")}


def _start_dump_process(run_dir: RunDir, source: Topology, options: DumpOptions):
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    child = context.Process(target=_dump_child, args=(run_dir, source, options, errors, os.getpid()),
                            daemon=False)  # a daemon cannot start the dump's workers (workers.py); dies with us anyway
    child.start()
    return child, errors


def _dump_child(run_dir, source, options, errors, parent_pid: int | None = None) -> None:
    die_with_parent(parent_pid)
    code = relay_errors(lambda: dump_stage(run_dir, source, options), errors.put,  # the parent admitted the source
                        lambda exc: f"unexpected {type(exc).__name__} in the dump process: {exc}",
                        "rerun with --debug for details; the run directory is safe to resume")
    if code:
        raise SystemExit(code)


def _raise_child_error(child, errors) -> None:
    if child.exitcode == 0:
        return
    if not errors.empty():
        raise_relayed(errors.get())
    raise RuntimeFailure(f"the dump process stopped with exit code {child.exitcode}",
                         "rerun the same command to resume")


def summarize(run_dir: RunDir) -> dict:
    """The numbers an operator asks for, from the ledgers alone."""
    dump_ledger, replay_ledger = DumpLedger.load(run_dir), ReplayLedger.load(run_dir)
    dump_counts, replay_counts = dump_ledger.totals(), replay_ledger.counts
    skipped = dict(dump_counts.skipped)
    for reason, count in replay_counts.skipped.items():
        skipped[reason] = skipped.get(reason, 0) + count
    restored, struct_written, expired, rewritten = _distinct_key_counts(dump_ledger, replay_ledger)
    return {
        "scanned": dump_counts.scanned, "dumped": dump_counts.dumped + dump_counts.struct_keys,
        "vanished": dump_counts.vanished, "expired": expired,
        "restored": restored, "struct_written": struct_written, "rewritten": rewritten,
        "skipped": skipped,
        "skipped_keys": (dump_ledger.skipped_keys + replay_counts.skipped_keys)[:20],
        "not_held": dict(replay_counts.not_held), "not_held_keys": replay_counts.not_held_keys[:20],
        "bytes": dump_counts.bytes, "retries": replay_counts.retries,
        "dump_done": dump_ledger.finished, "replay_done": replay_ledger.finished,
    }


def _distinct_key_counts(dump_ledger: DumpLedger, replay_ledger: ReplayLedger) -> tuple[int, int, int, int]:
    """Restored, written type by type and expired keys, each key once: the segments a resumed dump
    superseded (their keys were read again) are left out and counted as `rewritten` writes instead."""
    counts = replay_ledger.counts
    restored, struct_written, expired = counts.restored, counts.struct_written, counts.expired
    by_segment = replay_ledger.keys_by_segment
    superseded = [by_segment[name] for name in dump_ledger.superseded if name in by_segment]
    rewritten = sum(map(sum, superseded))
    for keys in superseded:
        restored, struct_written, expired = restored - keys[0], struct_written - keys[1], expired - keys[2]
    return restored, struct_written, expired, rewritten


def judge_skipped(run_dir: RunDir, accepted: bool) -> BadInput | None:
    """A copy that left keys behind ends green only if the operator accepts that (--skip-unsupported).

    The decision is recorded in run.json: verify lists the skipped keys apart from differences, and the
    cutover gate passes such a verify only where they were accepted. Returns the refusal, if any."""
    RunLedger.load(run_dir).accept_skipped(accepted)
    summary = summarize(run_dir)
    total = sum(summary["skipped"].values())
    if not total or accepted:
        return None
    from .keynames import readable
    reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(summary["skipped"].items()))
    names = ", ".join(readable(item["key"]) for item in summary["skipped_keys"][:5])
    keys = "1 key could not be migrated and was" if total == 1 else f"{total} keys could not be migrated and were"
    return BadInput(f"{keys} skipped: {reasons}" + (f" (e.g. {names})" if names else ""),
                    "rename or remove those keys on the source (or load the module on the target) and rerun the same "
                    "command, or pass --skip-unsupported to accept the copy without them")


STAGES = ("dump", "replay", "verify")


def redo_stages(run_dir: RunDir, stages: tuple[str, ...]) -> None:
    """--redo: the earliest named stage decides what is forgotten."""
    for stage in STAGES:
        if stage in stages:
            redo(run_dir, stage)
            return


def redo(run_dir: RunDir, stage: str) -> None:
    """Forget a stage's progress (and everything downstream of it) so that `run` does it again.

    Redoing the dump removes its segments: they hold customer data and would be stale. The replay
    ledger keeps its start mark, so the target, which this run dir wrote to, is not refused as non-empty.
    """
    if stage == "dump":
        for path in run_dir.segments.iterdir():
            path.unlink()
        DumpLedger(run_dir).forget()
    if stage in ("dump", "replay"):
        replayed = ReplayLedger.load(run_dir)
        if replayed.found:
            replayed.restart()
    VerifyLedger(run_dir).forget()


def status(run_dir: RunDir) -> dict:
    """Every stage's state, counts and timings, plus the last verify and cutover, from the ledgers alone."""
    summary = summarize(run_dir)
    stages = {}
    for name, ledger in (("dump", DumpLedger.load(run_dir)), ("replay", ReplayLedger.load(run_dir))):
        stages[name] = {"state": ledger.state, "started_at": _when(ledger.started_at),
                        "finished_at": _when(ledger.finished_at), "seconds": ledger.seconds}
    verify = VerifyLedger.load(run_dir)
    stages["verify"] = ({"state": "equal" if verify.equal else "differences",
                         "differences": verify.differences, "finished_at": _when(verify.finished_at)}
                        if verify.found else {"state": "not started"})
    cutover = CutoverLedger.load(run_dir).record
    stages["cutover"] = {"state": cutover.state or "recorded"} if cutover else {"state": "not started"}
    result = {"stages": stages, "counts": summary, "run": RunLedger.load(run_dir).describe()}
    sync = sync_status(run_dir)
    if sync is not None:
        result["sync"] = sync
    live = _live_status(run_dir)
    if live is not None:
        result["live"] = live
    return result


def sync_status(run_dir: RunDir) -> dict | None:
    """The last (or running) sync's state from sync.json, with whether it is alive."""
    from .sync.protocol import SyncLedger
    ledger = SyncLedger.load(run_dir)
    if not ledger.found:
        return None
    return {**ledger.to_dict(), "running": ledger.running()}


def _live_status(run_dir: RunDir) -> dict | None:
    """A live cutover's figures (phase, fence, forwarded, conflicts, old-side activity), once one began."""
    if not any((run_dir.path / name).exists() for name in ("flip.json", "live-cutover.json")):
        return None
    from .cloud.live_cutover import live_status
    return live_status(run_dir)


def _when(timestamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp)) if timestamp else None
