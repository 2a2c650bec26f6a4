"""One function per command: open the endpoints and the run dir, take the run dir's lock, call the
stages, and decide the exit code.

cli.py parses the options into the arguments here and renders what comes back; nothing here prints.
The stages report progress and warnings through `events` (console.py's, from the command line). Each
command returns an `Outcome`: the result to show, the exit code, and a refusal to raise once the
result is shown (copied keys were skipped and the operator did not accept that).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import redis

from .datapath.reader import DEFAULT_BATCH_BYTES, DEFAULT_MAX_PAYLOAD, DumpOptions
from .datapath.replay import ReplayOptions
from .errors import BadInput, DifferencesFound, GateRefused, MigrateError, RuntimeFailure, Unreachable
from .events import SILENT, Events, Warn
from .net.endpoints import Endpoint, Topology, discover, no_such_database, probe_rdb_version, translated_errors
from .net.iam import IamCache
from .net.keyspace import SlotRanges
from .pipeline import dump_stage, judge_skipped, redo_stages, refuse_dump_dir, replay_stage, run_stages
from .pipeline import status as run_status
from .rundir import PlanLedger, RunDir, RunLedger
from .verify.stage import VerifyOptions, run_verify

if TYPE_CHECKING:
    from .cloud.aws import Clients  # the cloud modules import boto3: only plan, cutover and rollback load them


@dataclass(frozen=True)
class Outcome:
    """What a command did: the result to show, the exit code it decided, and a refusal to raise after
    the result is shown (its message, hint and exit code then decide)."""

    result: dict
    exit_code: int = 0
    refusal: MigrateError | None = None


# --- endpoints, and the source a copy is admitted from ------------------------------------------------

def _endpoint(role: str, url: str, tls_insecure: bool, warn: Warn, iam: IamCache | None = None) -> Endpoint:
    """The endpoint of `url`; with `iam` (--source-iam / --target-iam) every connection signs its own IAM
    token, and one is signed here already, so missing AWS credentials or region stop the command at once."""
    if tls_insecure:
        warn("--tls-insecure: TLS certificates are NOT verified; never use this in production")
    endpoint = Endpoint.from_url(role, url, tls_insecure=tls_insecure, iam=iam)
    if endpoint.iam is not None:
        endpoint.iam.token()
    return endpoint


def open_source(endpoint: Endpoint, db: int) -> Topology:
    """Discover the source and check that `db` exists there (a cluster has only db 0, but on Valkey 9 where
    cluster-databases allows more)."""
    topology = discover(endpoint)
    if topology.is_cluster and db != 0 and not topology.has_cluster_databases:
        raise BadInput(f"source {endpoint.redacted} is a cluster, which has only db 0, but db {db} was asked for",
                       "drop --db (or use /0 in the URL)")
    if db != 0:
        _check_database(topology, db)
    return topology


def _check_database(topology: Topology, db: int) -> None:
    node = topology.masters[0]
    with translated_errors(topology.endpoint):
        try:
            topology.client(node, db).ping()
        except redis.ResponseError as exc:
            if "DB index is out of range" in str(exc):
                raise no_such_database(topology.endpoint, db, node.host, node.port) from None
            raise


def open_target(endpoint: Endpoint) -> Topology:
    if endpoint.db != 0:
        raise BadInput(f"target {endpoint.redacted} names db {endpoint.db}; ElastiCache Serverless has only db 0",
                       "use /0 (or no db) in the target URL")
    return discover(endpoint)


@dataclass(frozen=True)
class SourceChecks:
    """What the operator said is fine about the source: keys left in other databases, or no keys at all."""

    ignore_other_dbs: bool = False
    allow_empty: bool = False


def check_source(run_dir: RunDir, source: Topology, db: int, checks: SourceChecks, warn: Warn) -> None:
    """dump's and run's refusals of a source that would copy too little: keys in databases that are not
    copied (plan calls them a blocker), and an empty database (a wrong URL or a Redis restarted empty).
    Keys deliberately left in other databases are recorded in run.json, for the cutover to show."""
    others, unavailable = source.other_databases(db)
    for name in unavailable:
        warn(f"INFO keyspace is unavailable on {name}: other databases were not checked")
    if others:
        listed = ", ".join(f"db{n}: {k} keys" for n, k in others.items())
        if not checks.ignore_other_dbs:
            raise BadInput(f"the source has data outside db{db}, which is the only one migrated ({listed})",
                           "ElastiCache Serverless has only db 0: migrate each database in its own run into its own "
                           f"cache (--db N or the URL's /N), or move the keys into db{db}, or flush those databases if "
                           "unused; --ignore-other-dbs copies only this one anyway")
        warn(f"--ignore-other-dbs: the source's other databases are not migrated ({listed})")
        RunLedger.load(run_dir).ignore_databases(db, others)
    if not checks.allow_empty and source.key_count(db) == 0:
        raise BadInput(f"the source {source.endpoint.redacted} holds no keys in db{db}: there is nothing to migrate",
                       "check the URL and --db (a wrong host, port or database?), and whether the source Redis was "
                       "just restarted without its data; pass --allow-empty-source if an empty copy is really meant")


def bind_endpoints(run_dir: RunDir, source: Endpoint | None, target: Endpoint | None, db: int = 0) -> None:
    """Tie the run dir to its source and target, or refuse one made for others: before anything in it changes."""
    if source is not None:
        run_dir.bind("source", {"url": source.identity, "db": db})
    if target is not None:
        run_dir.bind("target", {"url": target.identity})


def admit_source(run_dir: RunDir, source: Topology, target: Endpoint | None, db: int, checks: SourceChecks,
                 warn: Warn) -> None:
    """The run dir's own endpoints, and a source that would not copy too little: refused before any stage
    (or `--redo`) changes the run dir."""
    bind_endpoints(run_dir, source.endpoint, target, db)
    check_source(run_dir, source, db, checks, warn)


def preflight(run_dir: RunDir, source: Topology, target: Topology, db: int, warn: Warn) -> None:
    """`run`'s first stage: the plan of database `db`, recorded once per run dir. Its blockers are only
    warned about: the stages' own gates (empty target, one database, empty source) enforce them, with
    the options that override them."""
    ledger = PlanLedger.load(run_dir)
    if ledger.found:
        return
    from .cloud import plan as planning
    try:
        result = json.loads(json.dumps(planning.plan(source, target, db), default=str))
    except (Unreachable, RuntimeFailure, OSError, redis.ConnectionError, redis.TimeoutError) as exc:  # advisory: go on
        warn(f"plan: the survey did not finish ({getattr(exc, 'message', exc)}); the stages' own checks "
             f"still apply, and the next run tries the plan again")
        return
    ledger.record(result)
    for blocker in ledger.blockers:
        warn(f"plan: {blocker['problem']} ({blocker['fix']})")


# --- dump, replay, run, status -----------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """The keys a dump reads and how, as the operator gave them; `db` None means the source URL's."""

    db: int | None = None
    match: str | None = None
    types: tuple[str, ...] = ()
    scan_count: int = 1000
    max_payload: int = DEFAULT_MAX_PAYLOAD
    batch_bytes: int = DEFAULT_BATCH_BYTES
    slots: str | None = None           # --slots A-B[,C-D]: only keys in these hash slots
    workers: int | None = None         # --workers N: masters dumped at once (None: the number of cores)
    segment_records: int | None = None  # --segment-records N (None: the run dir's dump's own, else 10,000)

    def dump_options(self, source: Endpoint, mode: str = "auto", target_rdb: int | None = None) -> DumpOptions:
        if self.match is not None and (not self.match or "\0" in self.match):
            raise BadInput(f"--match {self.match!r} is not a usable SCAN pattern", "give a glob such as 'session:*'")
        return DumpOptions(db=source.db if self.db is None else self.db, match=self.match, types=tuple(self.types),
                           scan_count=self.scan_count, max_payload=self.max_payload, batch_bytes=self.batch_bytes,
                           struct_all=mode == "struct", target_rdb=target_rdb, slots=slot_ranges(self.slots),
                           workers=self.workers, segment_records=self.segment_records)


def slot_ranges(text: str | None) -> SlotRanges | None:
    """--slots as SlotRanges; None without it (all slots)."""
    if text is None:
        return None
    try:
        return SlotRanges.parse(text)
    except ValueError as exc:
        raise BadInput(f"--slots {text!r}: {exc}", "give hash slot ranges A-B[,C-D] within 0-16383, "
                                                   "e.g. --slots 0-8191") from None


def bind_slots(directory: RunDir, slots: SlotRanges | None) -> None:
    """A run dir copies one slot range (run.json); a rerun with other --slots is refused (exit 2)."""
    RunLedger.load(directory).bind_slots(None if slots is None else str(slots))


def _copy(directory: RunDir, work: Callable[[], dict], skip_unsupported: bool) -> Outcome:
    """Copy stages run under the run dir's lock; keys they skipped are refused unless the operator accepts them."""
    with directory.lock():
        result = work()
        refusal = judge_skipped(directory, skip_unsupported)
    return Outcome(result, refusal=refusal)


def dump(source_url: str, run_dir: str, selection: Selection, *, mode: str = "auto",
         checks: SourceChecks = SourceChecks(), skip_unsupported: bool = False, tls_insecure: bool = False,
         events: Events = SILENT, source_iam: IamCache | None = None) -> Outcome:
    source = _endpoint("source", source_url, tls_insecure, events.warn, source_iam)
    options = selection.dump_options(source, mode)
    directory = RunDir(run_dir, create=True)

    def work() -> dict:
        topology = open_source(source, options.db)
        admit_source(directory, topology, None, options.db, checks, events.warn)
        bind_slots(directory, options.slots)
        return dump_stage(directory, topology, options, events.progress)

    return _copy(directory, work, skip_unsupported)


def replay(target_url: str, run_dir: str, options: ReplayOptions, *, skip_unsupported: bool = False,
           tls_insecure: bool = False, events: Events = SILENT, target_iam: IamCache | None = None,
           slots: str | None = None, from_uri: str | None = None, clients: Clients | None = None) -> Outcome:
    """Replay the run dir's dump; --slots, if given, must be the run dir's own (its dump holds only those).
    With `from_uri` the segments stream from an S3 archive and the run dir holds only this replay's progress."""
    target = _endpoint("target", target_url, tls_insecure, events.warn, target_iam)
    archive = _archive_source(from_uri, clients)
    directory = RunDir(run_dir, create=archive is not None)
    wanted = slot_ranges(slots)

    def work() -> dict:
        if archive is not None:
            refuse_dump_dir(directory)  # before anything in it changes
        topology = open_target(target)
        if wanted is not None:
            bind_slots(directory, wanted)
        bind_endpoints(directory, None, target)
        if archive is not None:  # its progress names segments: resume only from the same archive
            directory.bind("archive", {"uri": archive.uri, "segments": archive.content_sha256})
        return replay_stage(directory, topology, options, events.progress, warn=events.warn, archive=archive)

    return _copy(directory, work, skip_unsupported)


def run(source_url: str, target_url: str, run_dir: str, selection: Selection, options: ReplayOptions, *,
        redo: tuple[str, ...] = (), checks: SourceChecks = SourceChecks(), skip_unsupported: bool = False,
        tls_insecure: bool = False, events: Events = SILENT, source_iam: IamCache | None = None,
        target_iam: IamCache | None = None) -> Outcome:
    """Dump and replay at once, then verify. The target's RDB version decides which payloads the dump
    reads type by type (mode auto). Exit 1 when the verify found differences."""
    source = _endpoint("source", source_url, tls_insecure, events.warn, source_iam)
    target = _endpoint("target", target_url, tls_insecure, events.warn, target_iam)
    target_topology = open_target(target)
    target_rdb = probe_rdb_version(target_topology) if options.mode == "auto" else None
    dump_options = selection.dump_options(source, options.mode, target_rdb)
    if dump_options.slots is not None and (dump_options.match or dump_options.types):
        raise BadInput("--slots cannot be combined with --match or --type in `run`",
                       "split by --slots, or select by --match/--type, not both")
    directory = RunDir(run_dir, create=True)

    def work() -> dict:
        source_topology = open_source(source, dump_options.db)
        admit_source(directory, source_topology, target, dump_options.db, checks,  # refused before --redo forgets
                     events.warn)
        bind_slots(directory, dump_options.slots)
        redo_stages(directory, redo)
        preflight(directory, source_topology, target_topology, dump_options.db, events.warn)
        return run_stages(directory, source_topology, target_topology, dump_options, options, events.progress,
                          events.warn)

    outcome = _copy(directory, work, skip_unsupported)
    if outcome.refusal is None and not outcome.result["verify"].get("equal"):
        return replace(outcome, exit_code=DifferencesFound.exit_code)
    return outcome


def status(run_dir: str) -> Outcome:
    return Outcome(run_status(RunDir(run_dir)))


# --- verify ------------------------------------------------------------------------------------------

def verify(target_url: str, options: VerifyOptions, *, source_url: str | None = None, run_dir: str | None = None,
           tls_insecure: bool = False, events: Events = SILENT, source_iam: IamCache | None = None,
           target_iam: IamCache | None = None, slots: str | None = None, clients: Clients | None = None) -> Outcome:
    """The reference is the source, or with --against-dump the run dir's dump, which must exist (so the
    run dir is created only for a verify against the source). Exit 1 when the two sides differ."""
    if options.delete_extra and not options.repair:
        raise BadInput("--delete-extra only applies with --repair", "add --repair, or drop --delete-extra")
    if options.dump_source is not None and not options.against_dump:
        raise BadInput("--from needs --against-dump: the archive is the reference", "add --against-dump")
    directory = RunDir(run_dir, create=not options.against_dump) if run_dir else None
    options = _verify_slots(directory, options, slot_ranges(slots))
    if options.dump_source is not None:
        options = replace(options, dump_source=_archive_source(options.dump_source, clients))
    source = None
    target = open_target(_endpoint("target", target_url, tls_insecure, events.warn, target_iam))
    if source_url and not options.against_dump:
        source_endpoint = _endpoint("source", source_url, tls_insecure, events.warn, source_iam)
        options = replace(options, db=source_endpoint.db if options.db is None else options.db)
        source = open_source(source_endpoint, options.db)
    with directory.lock() if directory else contextlib.nullcontext():
        result = run_verify(source, target, directory, options, events.progress)
    return Outcome(result.to_dict(), exit_code=0 if result.equal else DifferencesFound.exit_code)


def _verify_slots(directory: RunDir | None, options: VerifyOptions, slots: SlotRanges | None) -> VerifyOptions:
    """--slots limits the verify to those slots on both sides; with a run dir, they default to (and must be)
    the run dir's own, so that its verify, which the cutover gate reads, covers exactly what it copied."""
    if directory is not None:
        recorded = RunLedger.load(directory).slots
        if slots is None and recorded is not None:
            slots = slot_ranges(recorded)
        bind_slots(directory, slots)
    if slots is not None and (options.against_dump or options.sample):
        raise BadInput("--slots applies to a full verify against the source",
                       "drop --sample/--against-dump, or verify without --slots")
    return replace(options, slots=slots)


# --- plan, cutover, rollback -------------------------------------------------------------------------

def plan(source_url: str, target_url: str, *, serverless_cache: str | None = None, env: str | None = None,
         prefix: str, sample: int = 5000, storage_headroom: float = 1.5, tls_insecure: bool = False,
         clients: Clients | None = None, events: Events = SILENT, source_iam: IamCache | None = None,
         target_iam: IamCache | None = None) -> Outcome:
    """Read-only: survey the source URL's database and the target. Exit 1 when there are blockers."""
    from .cloud import plan as planning
    source_endpoint = _endpoint("source", source_url, tls_insecure, events.warn, source_iam)
    source = open_source(source_endpoint, source_endpoint.db)
    target = open_target(_endpoint("target", target_url, tls_insecure, events.warn, target_iam))
    result = planning.plan(source, target, source_endpoint.db, serverless_cache=serverless_cache, env=env,
                           prefix=prefix, sample=sample, storage_headroom=storage_headroom, clients=clients)
    return Outcome(result, exit_code=0 if result["verdict"] == "go" else GateRefused.exit_code)


def _switch_lock(directory: RunDir | list[RunDir] | None, dry_run: bool):
    """A live cutover or rollback holds the run dir's lock (every run dir's); a dry run writes nothing and takes
    none."""
    if isinstance(directory, list):
        stack = contextlib.ExitStack()
        for each in directory if not dry_run else ():
            stack.enter_context(each.lock())
        return stack
    return directory.lock() if directory and not dry_run else contextlib.nullcontext()


def _run_dirs(run_dir: str | tuple[str, ...] | list[str] | None) -> RunDir | list[RunDir] | None:
    """--run-dir, once or repeated (the run dirs of a copy split by --slots)."""
    if isinstance(run_dir, (tuple, list)):
        dirs = [RunDir(path) for path in dict.fromkeys(run_dir)]
        return dirs[0] if len(dirs) == 1 else dirs or None
    return RunDir(run_dir) if run_dir else None


def _switched(result: dict) -> Outcome:
    """A refusal (or a dry run that would be refused) exits 1."""
    return Outcome(result, exit_code=GateRefused.exit_code if result["refused"] else 0)


@dataclass(frozen=True)
class Fencing:
    """A cutover on a running sync: the old Redis to fence, how long, or no fence; sync's lag bound."""

    source_url: str | None = None
    fence_ms: int = 2000
    no_fence: bool = False
    max_lag_ms: int = 2000
    tls_insecure: bool = False


def cutover(env: str, *, target_url: str | None = None, serverless_cache: str | None = None,
            run_dir: str | tuple[str, ...] | None = None, prefix: str, max_verify_age: str = "30m", force: bool = False,
            redeploy: tuple[str, ...] = (), dry_run: bool = False, clients: Clients | None = None,
            fencing: Fencing = Fencing()) -> Outcome:
    """With a sync following on the run dir: the fenced live cutover (cloud/live_cutover.py); else today's."""
    from .cloud import cutover as switching
    from .cloud import live_cutover as live
    directory = _run_dirs(run_dir)
    if isinstance(directory, list):
        _refuse_running_syncs(directory, live)
    sync = None if isinstance(directory, list) else live.running_sync(directory)  # several: a copy split by --slots
    if sync is not None:
        with directory.cutover_lock() if not dry_run else contextlib.nullcontext():
            return _switched(live.cutover_on_sync(
                env, sync, directory, target_url=target_url, serverless_cache=serverless_cache,
                source_url=fencing.source_url, prefix=prefix, fence_ms=fencing.fence_ms, no_fence=fencing.no_fence,
                max_lag_ms=fencing.max_lag_ms, force=force, redeploy=redeploy, dry_run=dry_run, clients=clients,
                tls_insecure=fencing.tls_insecure))
    with _switch_lock(directory, dry_run):
        return _switched(switching.cutover(env, target_url=target_url, serverless_cache=serverless_cache,
                                           run_dir=directory, prefix=prefix, max_verify_age=max_verify_age,
                                           force=force, redeploy=redeploy, dry_run=dry_run, clients=clients))


def _refuse_running_syncs(directories: list[RunDir], live) -> None:
    """The live cutover fences and drains ONE sync. Over several (a source split by --slots) a switch would
    drain none of them, and their reconciles, still deleting extras, could delete the apps' new keys: refused."""
    running = [str(each.path) for each in directories if live.running_sync(each) is not None]
    if running:
        raise GateRefused(f"a sync is following on {', '.join(running)}: a live cutover (fence, drain, flip) "
                          "takes one sync's run dir, not several",
                          "stop every sync (SIGTERM: each exits 0 once reconciled) and the apps' writes, verify each "
                          "run dir (`verify --run-dir DIR`), then cutover with every --run-dir; or follow all slots "
                          "with one sync for a live cutover")


@dataclass(frozen=True)
class BringBack:
    """rollback --bring-back: the migration's own old Redis (--source) and cache (--target)."""

    source_url: str
    target_url: str
    threshold: int = 100
    tls_insecure: bool = False
    rollout_timeout_s: float = 900


def rollback(env: str, *, run_dir: str | tuple[str, ...] | None = None, prefix: str, force: bool = False,
             redeploy: tuple[str, ...] = (), dry_run: bool = False, clients: Clients | None = None,
             bring_back: BringBack | None = None, events: Events = SILENT) -> Outcome:
    """Put the recorded SSM values back; with --bring-back, copy the cache's writes back to the old Redis first
    (and the stragglers after): exit 0 only when a last compare is clean."""
    from .cloud import cutover as switching
    directory = _run_dirs(run_dir)
    if bring_back is not None:
        first = directory[0] if isinstance(directory, list) else directory  # any run dir holds the record
        return _brought_back(env, first, prefix, force, redeploy, dry_run, clients, bring_back, events)
    with _switch_lock(directory, dry_run):
        return _switched(switching.rollback(env, run_dir=directory, prefix=prefix, force=force, redeploy=redeploy,
                                            dry_run=dry_run, clients=clients))


def _brought_back(env: str, directory: RunDir | None, prefix: str, force: bool, redeploy: tuple[str, ...],
                  dry_run: bool, clients: Clients | None, options: BringBack, events: Events) -> Outcome:
    from .cloud import bring_back as back
    if directory is None:
        raise BadInput("--bring-back needs --run-dir", "pass the run dir of the sync and cutover: its baseline says "
                                                       "which keys sync put on the cache")
    back.refuse_running_sync(directory)
    old = open_source(_endpoint("source", options.source_url, options.tls_insecure, events.warn), 0)
    cache = open_target(_endpoint("target", options.target_url, options.tls_insecure, events.warn))
    with _switch_lock(directory, dry_run):
        result = back.bring_back(env, run_dir=directory, old=old, cache=cache, threshold=options.threshold,
                                 rollout_timeout_s=options.rollout_timeout_s,
                                 prefix=prefix, force=force, redeploy=redeploy, dry_run=dry_run, clients=clients)
    clean = not result["refused"] and result["bring_back"]["final_differences"] == 0
    return Outcome(result, exit_code=0 if clean or dry_run and not result["refused"] else GateRefused.exit_code)


# --- sync --------------------------------------------------------------------------------------------

def sync(source_url: str, target_url: str, run_dir: str, selection: Selection, options: ReplayOptions, *,
         enable_notifications: bool = False, max_pending: int | None = None, checks: SourceChecks = SourceChecks(),
         skip_unsupported: bool = False, tls_insecure: bool = False, events: Events = SILENT,
         live: Callable[[dict], None] | None = None, source_iam: IamCache | None = None,
         target_iam: IamCache | None = None) -> Outcome:
    """Capture keyspace events, bulk copy, then follow every change until SIGTERM/SIGINT. Exit 0 when
    stopped with every gap reconciled, 3 when one is not (rerun sync to finish)."""
    from .pipeline import copy_stages
    from .rundir import DumpLedger
    from .sync.capture import CLIENT_NAME
    from .sync.follow import DEFAULT_MAX_PENDING
    from .sync.stage import SyncOptions, sync_stage
    if selection.match is not None or selection.types:
        raise BadInput("sync copies and follows a whole database: --match and --type do not apply",
                       "drop --match/--type (use dump/replay for a partial copy)")
    name = CLIENT_NAME.decode()
    source = replace(_endpoint("source", source_url, tls_insecure, events.warn, source_iam), client_name=name)
    target = replace(_endpoint("target", target_url, tls_insecure, events.warn, target_iam), client_name=name)
    target_topology = open_target(target)
    target_rdb = probe_rdb_version(target_topology) if options.mode == "auto" else None
    dump_options = selection.dump_options(source, options.mode, target_rdb)
    directory = RunDir(run_dir, create=True)
    sync_options = SyncOptions(enable_notifications=enable_notifications,
                               max_pending=max_pending or DEFAULT_MAX_PENDING, mode=options.mode)
    with directory.lock():
        source_topology = open_source(source, dump_options.db)
        if DumpLedger.load(directory).found:
            bind_endpoints(directory, source, target, dump_options.db)
        else:
            admit_source(directory, source_topology, target, dump_options.db, checks, events.warn)
        bind_slots(directory, dump_options.slots)  # another range on this run dir: refused like dump's
        if not DumpLedger.load(directory).found:
            preflight(directory, source_topology, target_topology, dump_options.db, events.warn)

        def copy() -> None:
            copy_stages(directory, source_topology, target_topology, dump_options, options, events.progress,
                        events.warn)

        result = sync_stage(directory, source_topology, target_topology, dump_options, options, sync_options, copy,
                            events.progress, events.warn, live)
        refusal = judge_skipped(directory, skip_unsupported)
    return Outcome(result, refusal=refusal)


# --- ecs-task ---------------------------------------------------------------------------------------------

def ecs_task(request, *, clients: Clients, plan_dir: str | None = None) -> Outcome:
    """The one-off Fargate task's definition, policies and run-task lines; sized from plan.json of
    `plan_dir` when given (a run dir `run` planned), else from the request's --keys/--primaries."""
    from .cloud import ecs_task as task
    if plan_dir is not None:
        ledger = PlanLedger.load(RunDir(plan_dir))
        if not ledger.found:
            raise BadInput(f"run directory {plan_dir} holds no plan.json",
                           "give the run dir of a `run` (it records its plan first), or --keys N [--primaries S]")
        request = replace(request, plan=ledger.plan)
    return Outcome(task.ecs_task(request, clients))


# --- archive, retire-check ---------------------------------------------------------------------------

def _archive_source(uri: str | None, clients: Clients | None):
    """An S3 archive as a segment source (its manifest read and checked now), or None."""
    if uri is None:
        return None
    from .cloud.archive import ArchiveSegments
    from .cloud.aws import Clients
    return ArchiveSegments(uri, clients or Clients())


def archive(run_dir: str, to_uri: str, *, kms_key: str | None = None, force: bool = False,
            clients: Clients | None = None, events: Events = SILENT) -> Outcome:
    """Upload the run dir's dump store to S3, under the run lock (a dump cannot add segments meanwhile)."""
    from .cloud import archive as archiving
    from .cloud.aws import Clients
    directory = RunDir(run_dir)
    with directory.lock():
        return Outcome(archiving.archive(directory, to_uri, clients or Clients(), kms_key=kms_key, force=force))


def retire_check(source_url: str, options, *, run_dir: str | None = None, tls_insecure: bool = False,
                 clients: Clients | None = None, events: Events = SILENT, source_iam: IamCache | None = None
                 ) -> Outcome:
    """GO (exit 0) or NO-GO (exit 1) for removing the old Redis, with the evidence and the next step."""
    from .cloud import retire
    from .cloud.aws import Clients
    endpoint = _endpoint("source", source_url, tls_insecure, events.warn, source_iam)
    directory = RunDir(run_dir) if run_dir else None
    result = retire.retire_check(endpoint, directory, options, clients or Clients())
    return Outcome(result, exit_code=0 if result["verdict"] == "GO" else GateRefused.exit_code)
