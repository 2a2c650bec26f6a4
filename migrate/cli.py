"""Command line: parses the options, makes one call into commands.py, renders what it returns through
console.py, and exits with the code the command decided (errors: their message, hint and exit code).

Exit codes: 0 success; 1 differences found or a safety gate refused; 2 bad input;
3 a runtime failure (rerun the same command to resume).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import click

from . import __version__, commands
from .console import (
    TERMINAL,
    emit,
    end_live_line,
    live_sync_line,
    render_ecs_task,
    render_plan,
    render_retire,
    render_status,
    render_summary,
    render_switch,
    render_sync,
    render_verify,
)
from .datapath.replay import ReplayOptions
from .errors import BadInput, MigrateError, RuntimeFailure
from .net.iam import KINDS, REPLICATION_GROUP, SERVERLESS, IamCache
from .redact import scrub
from .verify.stage import VerifyOptions


class Context:
    debug = False


def handle_errors(func):
    """Turn MigrateError into its message, hint and exit code; any other error into exit 3 without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MigrateError as exc:
            if Context.debug:
                click.echo(scrub(traceback.format_exc()), err=True)
            click.echo(scrub(f"error: {exc}"), err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to resume", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback, no secret
            if Context.debug:
                click.echo(scrub(traceback.format_exc()), err=True)
            click.echo(scrub(f"error: unexpected {type(exc).__name__}: {exc}\n  hint: rerun with --debug "
                             "for the traceback; the run directory is safe to resume"), err=True)
            sys.exit(3)

    return wrapper


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, for automation.")(func)


def source_option(func):
    return click.option("--source", "source_url", required=True, metavar="URL",
                        help="Source Redis URL: redis://[user:pass@]host:port/db or rediss://...?ssl_ca_certs=FILE. "
                             "The password may come from REDIS_MIGRATE_SOURCE_PASSWORD instead.")(func)


def target_option(func):
    return click.option("--target", "target_url", required=True, metavar="URL",
                        help="Target Redis URL (rediss:// for ElastiCache Serverless). "
                             "The password may come from REDIS_MIGRATE_TARGET_PASSWORD instead.")(func)


def run_dir_option(required: bool = True):
    return click.option("--run-dir", type=click.Path(file_okay=False), required=required,
                        help="Run directory: dump segments, ledger, reports. Rerun with the same one to resume.")


def tls_insecure_option(func):
    return click.option("--tls-insecure", is_flag=True,
                        help="Do not verify TLS certificates (prints a warning; never for production).")(func)


def iam_options(*roles: str):
    """--ROLE-iam NAME and --ROLE-iam-type for each role ("source", "target"); the command receives one
    `ROLE_iam` argument: an `IamCache`, or None without the flag. Pass it on to commands.py, which opens
    the endpoint with it (`_endpoint(..., iam)`)."""
    defaults = {"source": REPLICATION_GROUP, "target": SERVERLESS}

    def check_name(ctx, param, value):
        try:
            return value if value is None else IamCache(value).name
        except MigrateError as exc:
            raise click.BadParameter(f"{exc.message} ({exc.hint})") from None

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for role in roles:
                name, kind = kwargs.pop(f"{role}_iam_name"), kwargs.pop(f"{role}_iam_type")
                kwargs[f"{role}_iam"] = IamCache(name, kind) if name else None
            return func(*args, **kwargs)

        for role in reversed(roles):
            wrapper = click.option(f"--{role}-iam-type", f"{role}_iam_type", type=click.Choice(KINDS),
                                   default=defaults[role], show_default=True,
                                   help=f"What --{role}-iam names: a serverless cache or a node-based replication "
                                        "group (the token's ResourceType).")(wrapper)
            wrapper = click.option(f"--{role}-iam", f"{role}_iam_name", metavar="NAME", default=None,
                                   callback=check_name,
                                   help=f"IAM authentication: sign a fresh token for every {role} connection, for "
                                        "the ElastiCache cache (or replication group) NAME, as the URL's user "
                                        "(rediss://USER@host:6379), with the standard AWS credential chain.")(wrapper)
        return wrapper

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="redis-migrate")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(debug: bool) -> None:
    """Move a production Redis into ElastiCache Serverless: plan, dump, replay, verify, cutover, rollback.

    Every stage is resumable: rerun the same command with the same --run-dir after a crash.
    """
    Context.debug = debug


def stop_on_sigterm() -> None:
    """ECS stops a task with SIGTERM, then SIGKILL after its grace period. Every stage survives a kill at any
    moment (atomic writes, checkpoints only after what they cover is durable, children that die with their
    parent, a lock the kernel releases), so SIGTERM ends the process at once, as a kill would, but says so in
    the task's log with exit 3 (a runtime failure: a rerun resumes). A handler also makes it work where the
    process is PID 1 of a container, which ignores signals it has no handler for. `sync` installs its own
    while it runs: it drains first."""
    owner = os.getpid()

    def stop(signum, _frame) -> None:
        if os.getpid() != owner:  # a forked child inherits the handler: only the command's process speaks
            os._exit(128 + signum)
        os.write(2, b"stopped by SIGTERM: rerun the same command with the same --run-dir to resume\n")
        os._exit(RuntimeFailure.exit_code)

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    stop_on_sigterm()
    cli(prog_name="redis-migrate")


# Stage commands register themselves below, one section each.
# --- data path: dump, replay, run, status ---

TYPE_CHOICES = ("string", "hash", "list", "set", "zset", "stream")


def dump_options(func):
    func = click.option("--db", type=click.IntRange(0), default=None,
                        help="Source database to migrate (default: the URL's, else 0).")(func)
    func = click.option("--match", metavar="GLOB", default=None, help="Only keys matching this SCAN pattern.")(func)
    func = click.option("--type", "types", multiple=True, type=click.Choice(TYPE_CHOICES),
                        help="Only keys of this type (repeatable).")(func)
    func = click.option("--scan-count", type=click.IntRange(10, 100_000), default=1000, show_default=True,
                        help="SCAN COUNT hint per call.")(func)
    func = click.option("--max-payload", type=click.IntRange(1 << 10), default=64 << 20, show_default=True,
                        metavar="BYTES", help="Keys larger than this are read and written in chunks.")(func)
    func = click.option("--batch-bytes", type=click.IntRange(64 << 10), default=4 << 20, show_default=True,
                        metavar="BYTES", help="Most value bytes (MEMORY USAGE) the source serializes per request: "
                                              "bounds how long it pauses and the memory in flight.")(func)
    func = click.option("--segment-records", type=click.IntRange(10, 1_000_000), default=None, metavar="N",
                        help="Keys per dump segment and checkpoint [default: 10000, or what the run dir's dump "
                             "started with]: smaller means less read again after a kill, but more files.")(func)
    return func


def source_check_options(func):
    func = click.option("--ignore-other-dbs", is_flag=True,
                        help="Copy only this database although others hold keys (they are NOT migrated; the run dir "
                             "records it and cutover shows it).")(func)
    func = click.option("--allow-empty-source", is_flag=True,
                        help="Go on although the source database holds no keys (refused by default: a wrong URL or "
                             "db, or a Redis restarted without its data).")(func)
    return func


def _source_checks(ignore_other_dbs: bool, allow_empty_source: bool) -> commands.SourceChecks:
    return commands.SourceChecks(ignore_other_dbs=ignore_other_dbs, allow_empty=allow_empty_source)


def replay_options(func):
    func = click.option("--mode", type=click.Choice(("auto", "struct")), default="auto", show_default=True,
                        help="auto: RESTORE payloads the target accepts, type-by-type writes for the rest.")(func)
    func = click.option("--max-ops-per-sec", type=click.IntRange(1), default=None,
                        help="Cap key writes per second (keep under the cache's ECPU/s maximum).")(func)
    func = click.option("--allow-nonempty-target", is_flag=True,
                        help="Write into a target that already holds keys (same-name keys are overwritten).")(func)
    return func


def slots_option(func):
    return click.option("--slots", metavar="A-B[,C-D]", default=None,
                        help="Only keys in these hash slots (0-16383): split a big source across several machines, "
                             "each with its own --run-dir; cutover takes all their run dirs.")(func)


def workers_option(func):
    return click.option("--workers", type=click.IntRange(1), default=None, metavar="N",
                        help="Source masters read at once, one process each [default: the number of cores].")(func)


def skip_unsupported_option(func):
    return click.option("--skip-unsupported", is_flag=True,
                        help="Exit 0 even when keys the target cannot take (key names over 4 KiB, module types) "
                             "were skipped. They are always counted and named in the report.")(func)


def _finish(outcome: commands.Outcome, as_json: bool, render: Callable[[dict], str] | None = None) -> None:
    """Show the command's result, then raise its refusal (message, hint, exit code) or exit with its code."""
    emit(outcome.result, as_json, render)
    if outcome.refusal is not None:
        raise outcome.refusal
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


def _selection(db, match, types, scan_count, max_payload, batch_bytes, slots=None, workers=None, segment_records=None
               ) -> commands.Selection:
    return commands.Selection(db=db, match=match, types=tuple(types), scan_count=scan_count, max_payload=max_payload,
                              batch_bytes=batch_bytes, slots=slots, workers=workers, segment_records=segment_records)


def _replay_options(mode, max_ops_per_sec, allow_nonempty_target, workers=None) -> ReplayOptions:
    return ReplayOptions(mode=mode, max_ops_per_sec=max_ops_per_sec, allow_nonempty_target=allow_nonempty_target,
                         workers=workers)


@cli.command()
@source_option
@run_dir_option()
@dump_options
@click.option("--mode", type=click.Choice(("auto", "struct")), default="auto", show_default=True,
              help="struct: read every key type by type (for a target with an older RDB version).")
@source_check_options
@skip_unsupported_option
@tls_insecure_option
@iam_options("source")
@slots_option
@workers_option
@json_option
@handle_errors
def dump(source_url, run_dir, db, match, types, scan_count, max_payload, batch_bytes, segment_records, mode,
         ignore_other_dbs, allow_empty_source, skip_unsupported, tls_insecure, source_iam, slots, workers, as_json):
    """Scan every source master and write keys with absolute expiries to durable segments."""
    outcome = commands.dump(source_url, run_dir,
                            _selection(db, match, types, scan_count, max_payload, batch_bytes, slots, workers,
                                       segment_records),
                            mode=mode, checks=_source_checks(ignore_other_dbs, allow_empty_source),
                            skip_unsupported=skip_unsupported, tls_insecure=tls_insecure, events=TERMINAL,
                            source_iam=source_iam)
    _finish(outcome, as_json)


def from_option(func):
    return click.option("--from", "from_uri", metavar="s3://BUCKET/PREFIX", default=None,
                        help="Read the dump from an archive written by `archive` instead of the run dir.")(func)


@cli.command()
@target_option
@run_dir_option()
@replay_options
@from_option
@skip_unsupported_option
@tls_insecure_option
@iam_options("target")
@slots_option
@workers_option
@json_option
@handle_errors
def replay(target_url, run_dir, mode, max_ops_per_sec, allow_nonempty_target, from_uri, skip_unsupported,
           tls_insecure, target_iam, slots, workers, as_json):
    """Write the dump into the target, pipelined per target master; resumes where it stopped."""
    outcome = commands.replay(target_url, run_dir,
                              _replay_options(mode, max_ops_per_sec, allow_nonempty_target, workers),
                              skip_unsupported=skip_unsupported, tls_insecure=tls_insecure, events=TERMINAL,
                              target_iam=target_iam, slots=slots, from_uri=from_uri,
                              clients=_aws_clients() if from_uri else None)
    _finish(outcome, as_json)


@cli.command()
@source_option
@target_option
@run_dir_option()
@dump_options
@replay_options
@click.option("--redo", type=click.Choice(("dump", "replay", "verify")), multiple=True,
              help="Do this stage (and the ones after it) again, even if the run dir says it is done.")
@source_check_options
@skip_unsupported_option
@tls_insecure_option
@iam_options("source", "target")
@slots_option
@workers_option
@json_option
@handle_errors
def run(source_url, target_url, run_dir, db, match, types, scan_count, max_payload, batch_bytes, segment_records,
        mode, max_ops_per_sec, allow_nonempty_target, redo, ignore_other_dbs, allow_empty_source, skip_unsupported,
        tls_insecure, source_iam, target_iam, slots, workers, as_json):
    """Dump and replay at once (both cores), then verify. Rerun with the same --run-dir to resume.

    Stages the run dir records as done are skipped; --redo STAGE does one again.
    """
    outcome = commands.run(source_url, target_url, run_dir,
                           _selection(db, match, types, scan_count, max_payload, batch_bytes, slots, workers,
                                      segment_records),
                           _replay_options(mode, max_ops_per_sec, allow_nonempty_target, workers), redo=redo,
                           checks=_source_checks(ignore_other_dbs, allow_empty_source),
                           skip_unsupported=skip_unsupported, tls_insecure=tls_insecure, events=TERMINAL,
                           source_iam=source_iam, target_iam=target_iam)
    _finish(outcome, as_json, render_summary)


@cli.command()
@run_dir_option()
@json_option
@handle_errors
def status(run_dir, as_json):
    """Show every stage's state, counts and timings, and the last verify and cutover."""
    _finish(commands.status(run_dir), as_json, render_status)


# --- sync ---

@cli.command()
@source_option
@target_option
@run_dir_option()
@click.option("--enable-notifications", is_flag=True,
              help="Turn on keyspace events (CONFIG SET notify-keyspace-events, adding K and A) where they are off "
                   "and the server allows it; the old value is restored when sync ends (or by the next sync after a "
                   "crash).")
@click.option("--max-pending", type=click.IntRange(1000), default=None, metavar="KEYS",
              help="Most changed keys waiting to be applied (default 500000); past it sync drops them and "
                   "reconciles instead, so memory stays bounded.")
@dump_options
@replay_options
@source_check_options
@skip_unsupported_option
@tls_insecure_option
@iam_options("source", "target")
@slots_option
@workers_option
@json_option
@handle_errors
def sync(source_url, target_url, run_dir, enable_notifications, max_pending, db, match, types, scan_count,
         max_payload, batch_bytes, segment_records, mode, max_ops_per_sec, allow_nonempty_target, ignore_other_dbs,
         allow_empty_source, skip_unsupported, tls_insecure, source_iam, target_iam, slots, workers, as_json):
    """Copy while the apps keep writing, then follow every change until SIGTERM/SIGINT.

    Subscribes to keyspace events on every source primary first, bulk copies (skipped when the run dir's
    copy is done), proves the copy with a verify, then applies every changed key. Gaps (a dropped
    subscriber, FLUSHDB, a failover, too many pending keys) are reconciled with a verify with repair.
    Exit 0 once stopped with nothing unreconciled; 3 otherwise (rerun sync to finish).

    With --slots A-B only keys in those hash slots are copied, followed and reconciled (several syncs,
    each with its own run dir, can split one source onto one target).
    """
    live = live_sync_line if sys.stderr.isatty() and not as_json else None
    outcome = commands.sync(source_url, target_url, run_dir,
                            _selection(db, match, types, scan_count, max_payload, batch_bytes, slots, workers,
                                       segment_records),
                            _replay_options(mode, max_ops_per_sec, allow_nonempty_target, workers),
                            enable_notifications=enable_notifications, max_pending=max_pending,
                            checks=_source_checks(ignore_other_dbs, allow_empty_source),
                            skip_unsupported=skip_unsupported, tls_insecure=tls_insecure, events=TERMINAL, live=live,
                            source_iam=source_iam, target_iam=target_iam)
    if live is not None:
        end_live_line()
    _finish(outcome, as_json, render_sync)


# --- verify ---

@cli.command()
@click.option("--source", "source_url", metavar="URL", default=None,
              help="Source Redis URL, the reference (not needed with --against-dump). "
                   "The password may come from REDIS_MIGRATE_SOURCE_PASSWORD instead.")
@target_option
@run_dir_option(required=False)
@click.option("--against-dump", is_flag=True,
              help="Use the run dir's dump as the reference instead of the source (works with the source stopped).")
@click.option("--sample", type=click.IntRange(1), default=None, metavar="N",
              help="Check about N random keys of each side instead of all keys (a quick look).")
@click.option("--ttl-tolerance", "ttl_tolerance", type=click.IntRange(0), default=2000, show_default=True,
              metavar="MS", help="Expiries that differ by at most this many ms are equal.")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Re-read differing keys this many times before reporting them (the source may be live).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="JSON lines file of the differences [default: <run-dir>/verify-report.jsonl].")
@click.option("--repair", is_flag=True, help="Recopy every differing key, then verify those keys again.")
@click.option("--delete-extra", is_flag=True, help="With --repair: delete keys that exist only on the target.")
@click.option("--db", type=click.IntRange(0), default=None, help="Source database (default: the URL's, else 0).")
@from_option
@tls_insecure_option
@iam_options("source", "target")
@slots_option
@workers_option
@json_option
@handle_errors
def verify(source_url, target_url, run_dir, against_dump, sample, ttl_tolerance, rounds, report, repair,
           delete_extra, db, from_uri, tls_insecure, source_iam, target_iam, slots, workers, as_json):
    """Prove the target holds what the source (or the dump) holds. Exit 0 equal, 1 differences, 2 bad input."""
    options = VerifyOptions(sample=sample, ttl_tolerance_ms=ttl_tolerance, rounds=rounds,
                            report=Path(report) if report else None, repair=repair, delete_extra=delete_extra,
                            against_dump=against_dump, db=db, workers=workers, dump_source=from_uri)
    outcome = commands.verify(target_url, options, source_url=source_url, run_dir=run_dir, tls_insecure=tls_insecure,
                              events=TERMINAL, source_iam=source_iam, target_iam=target_iam, slots=slots,
                              clients=_aws_clients() if from_uri else None)
    _finish(outcome, as_json, render_verify)


# --- plan, cutover, rollback ---

def _aws_clients():
    """The boto3 clients for this invocation: whatever the caller put in click's context object, else the
    standard chain's (built lazily, so only commands that reach AWS need credentials)."""
    from .cloud.aws import Clients
    return click.get_current_context().ensure_object(Clients)


def env_option(func):
    return click.option("--env", required=True, help="Environment whose parameters to repoint, e.g. prod.")(func)


def param_prefix_option(func):
    return click.option("--param-prefix", default="/storefront/{env}/redis", show_default=True,
                        help="SSM path holding <prefix>/endpoint and <prefix>/port; {env} is substituted.")(func)


def switch_options(func):
    """Options cutover and rollback share."""
    func = click.option("--dry-run", is_flag=True,
                        help="Show the before/after table and the checks; write nothing.")(func)
    func = click.option("--redeploy", multiple=True, metavar="CLUSTER/SERVICE",
                        help="Force a new ECS deployment afterwards, so the apps re-read SSM. Repeatable.")(func)
    func = click.option("--force", is_flag=True, help="Go ahead although a safety check failed.")(func)
    func = param_prefix_option(func)
    func = click.option("--run-dir", type=click.Path(file_okay=False), multiple=True,
                        help="Run directory whose verify gates the switch and which records it. Repeat it for a copy "
                             "split by --slots: together they must cover slots 0-16383 exactly once.")(func)
    return env_option(json_option(func))


@cli.command()
@source_option
@target_option
@click.option("--serverless-cache", metavar="NAME",
              help="Check the target cache's limits and cost, and show its endpoint.")
@click.option("--env", help="Also show the current SSM endpoint/port of this environment.")
@param_prefix_option
@click.option("--sample", default=5000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Keys to sample for the type histogram, TTL share and largest keys.")
@click.option("--storage-headroom", default=1.5, show_default=True, type=click.FloatRange(1.0),
              help="The cache's storage maximum must hold the source data times this.")
@tls_insecure_option
@iam_options("source", "target")
@json_option
@handle_errors
def plan(source_url, target_url, serverless_cache, env, param_prefix, sample, storage_headroom, tls_insecure,
         source_iam, target_iam, as_json):
    """Read-only preflight: versions, replay mode, sizes, blockers, and a go / blockers verdict (exit 1)."""
    outcome = commands.plan(source_url, target_url, serverless_cache=serverless_cache, env=env, prefix=param_prefix,
                            sample=sample, storage_headroom=storage_headroom, tls_insecure=tls_insecure,
                            clients=_aws_clients(), events=TERMINAL, source_iam=source_iam, target_iam=target_iam)
    _finish(outcome, as_json, render_plan)


@cli.command()
@click.option("--target", "target_url", metavar="URL", help="Cut over to this Redis URL's host and port.")
@click.option("--serverless-cache", metavar="NAME", help="Cut over to this ElastiCache Serverless cache's endpoint.")
@click.option("--max-verify-age", default="30m", show_default=True,
              help="The run dir's passing verify must be newer than this (30m, 2h, 90s).")
@click.option("--source", "source_url", metavar="URL", default=None,
              help="With a sync running on --run-dir: the old Redis to fence (default: the run dir's source, "
                   "password from REDIS_MIGRATE_SOURCE_PASSWORD).")
@click.option("--fence-ms", type=click.IntRange(200, 60_000), default=2000, show_default=True,
              help="With a sync running: CLIENT PAUSE WRITE on the old Redis for at most this long around the flip.")
@click.option("--no-fence", is_flag=True,
              help="With a sync running: no write fence (ElastiCache refuses CLIENT PAUSE); in-flight writes race "
                   "the flip and are forwarded after it.")
@click.option("--max-lag-ms", type=click.IntRange(0), default=2000, show_default=True,
              help="With a sync running: the gate refuses while sync lags more than this.")
@tls_insecure_option
@switch_options
@handle_errors
def cutover(env, target_url, serverless_cache, run_dir, param_prefix, max_verify_age, source_url, fence_ms, no_fence,
            max_lag_ms, tls_insecure, force, redeploy, dry_run, as_json):
    """Repoint the SSM endpoint/port at the target, after a fresh passing verify; recorded for rollback.

    With a sync following on --run-dir: gate on sync's health, fence the old Redis (CLIENT PAUSE WRITE),
    drain sync, flip, lift the fence; sync then forwards old-side writes by compare-and-set.
    """
    fencing = commands.Fencing(source_url=source_url, fence_ms=fence_ms, no_fence=no_fence, max_lag_ms=max_lag_ms,
                               tls_insecure=tls_insecure)
    outcome = commands.cutover(env, target_url=target_url, serverless_cache=serverless_cache, run_dir=run_dir,
                               prefix=param_prefix, max_verify_age=max_verify_age, force=force, redeploy=redeploy,
                               dry_run=dry_run, clients=_aws_clients(), fencing=fencing)
    _finish(outcome, as_json, render_switch)


@cli.command()
@click.option("--bring-back", is_flag=True,
              help="First copy the apps' writes on the cache back to the old Redis (scan-based rounds), then flip "
                   "back, then copy the stragglers; needs --source, --target and the cutover's --run-dir.")
@click.option("--source", "source_url", metavar="URL", default=None,
              help="With --bring-back: the old Redis (the migration's source), which receives the writes.")
@click.option("--target", "target_url", metavar="URL", default=None,
              help="With --bring-back: the serverless cache (the migration's target), the reference.")
@click.option("--threshold", type=click.IntRange(1), default=100, show_default=True,
              help="With --bring-back: copy-back rounds go on until one finds fewer differences than this.")
@click.option("--rollout-timeout", type=click.IntRange(0), default=900, show_default=True, metavar="SECONDS",
              help="With --bring-back and --redeploy: how long to wait, after the flip back, for the redeploys to "
                   "replace the tasks still on the cache before the straggler round (0: do not wait).")
@tls_insecure_option
@switch_options
@handle_errors
def rollback(env, run_dir, param_prefix, force, redeploy, dry_run, as_json, bring_back, source_url, target_url,
             threshold, rollout_timeout, tls_insecure):
    """Put back the SSM values the cutover recorded (run dir, else the SSM labels).

    With --bring-back, the writes the apps made on the cache are copied back to the old Redis first (sync must
    be stopped); exit 0 only when a last compare finds nothing but the reported conflicts.
    """
    options = None
    if bring_back:
        if not (source_url and target_url):
            raise BadInput("--bring-back needs --source (the old Redis) and --target (the serverless cache)",
                           "give both: the old Redis receives the cache's writes")
        options = commands.BringBack(source_url, target_url, threshold, tls_insecure, rollout_timeout)
    outcome = commands.rollback(env, run_dir=run_dir, prefix=param_prefix, force=force, redeploy=redeploy,
                                dry_run=dry_run, clients=_aws_clients(), bring_back=options, events=TERMINAL)
    _finish(outcome, as_json, render_switch)


# --- ecs-task ---

@cli.command("ecs-task")
@env_option
@click.option("--image", required=True, metavar="URI",
              help="The redis-migrate image, pinned by tag or digest (e.g. ACCOUNT.dkr.ecr.REGION.amazonaws.com/"
                   "redis-migrate:0.1.0).")
@click.option("--register", is_flag=True, help="Register the task definition (and the log group) through the API.")
@click.option("--create-roles", is_flag=True,
              help="With --register: create or update the task and execution roles with the policies shown.")
@click.option("--task-role-arn", metavar="ARN", default=None,
              help="Use this task role instead of redis-migrate-ENV-task (give it the task policy shown).")
@click.option("--execution-role-arn", metavar="ARN", default=None,
              help="Use this execution role instead of redis-migrate-ENV-execution.")
@click.option("--cluster", default=None, help="The storefront's ECS cluster (with --service).")
@click.option("--service", default=None,
              help="The storefront's ECS service: the task runs in its subnets and security groups, and may "
                   "redeploy it (cutover --redeploy).")
@click.option("--efs-file-system", metavar="ID", default=None,
              help="EFS file system mounted at /data for the run dir, so a stopped task resumes.")
@click.option("--efs-access-point", metavar="ID", default=None,
              help="EFS access point (IAM-authorised mount; owned by the image's user, mode 0700).")
@click.option("--source-secret", metavar="ARN", default=None,
              help="Secrets Manager secret holding the source password (REDIS_MIGRATE_SOURCE_PASSWORD).")
@click.option("--source-password-parameter", metavar="NAME", default=None,
              help="SSM SecureString parameter holding the source password, instead of --source-secret.")
@click.option("--target-secret", metavar="ARN", default=None,
              help="Secrets Manager secret holding the target password (REDIS_MIGRATE_TARGET_PASSWORD).")
@click.option("--target-password-parameter", metavar="NAME", default=None,
              help="SSM SecureString parameter holding the target password, instead of --target-secret.")
@click.option("--log-group", default="/ecs/redis-migrate", show_default=True, help="CloudWatch log group (awslogs).")
@click.option("--keys", type=click.IntRange(0), default=None,
              help="Size the task for this many keys (plan's figure), when no --run-dir holds a plan.")
@click.option("--primaries", type=click.IntRange(1), default=None,
              help="With --keys: the source's primaries (default 1, a standalone Redis).")
@run_dir_option(required=False)
@click.option("--slots-split", type=click.IntRange(1, 16384), default=1, show_default=True,
              help="Scale-out: one run-task line per slot range (run --slots A-B, each with its own run dir).")
@click.option("--stage", type=click.Choice(("sync", "run")), default="sync", show_default=True,
              help="What the task runs: the live sync, or a one-shot run (dump, replay, verify).")
@click.option("--source", "source_url", metavar="URL", default=None,
              help="Source URL for the run-task lines, without a password (it comes from the secret).")
@click.option("--target", "target_url", metavar="URL", default=None,
              help="Target URL for the run-task lines, without a password.")
@click.option("--serverless-cache", metavar="NAME", default=None,
              help="The target cache, for the role's resources [default: storefront-ENV].")
@click.option("--iam-user", "iam_users", multiple=True, metavar="USER",
              help="ElastiCache user the task authenticates as with IAM: grants elasticache:Connect. Repeatable.")
@param_prefix_option
@click.argument("stage_args", nargs=-1, metavar="[-- STAGE OPTIONS]")
@json_option
@handle_errors
def ecs_task(env, image, register, create_roles, task_role_arn, execution_role_arn, cluster, service, efs_file_system,
             efs_access_point, source_secret, source_password_parameter, target_secret, target_password_parameter,
             log_group, keys, primaries, run_dir, slots_split, stage, source_url, target_url, serverless_cache,
             iam_users, param_prefix, stage_args, as_json):
    """A one-off Fargate task for the migration: task definition, role policies, and the run-task lines.

    Sized from plan's figures (--run-dir's plan.json, or --keys), the run dir on EFS, the passwords from
    Secrets Manager or SSM SecureString, awslogs, and the storefront service's network. --register
    registers it. Options after -- go to the stage in the run-task lines (e.g. -- --enable-notifications).
    """
    from .cloud.ecs_task import TaskRequest
    request = TaskRequest(
        env=env, image=image, register=register, create_roles=create_roles, cluster=cluster, service=service,
        efs_file_system=efs_file_system, efs_access_point=efs_access_point, source_secret=source_secret,
        source_parameter=source_password_parameter, target_secret=target_secret,
        target_parameter=target_password_parameter, log_group=log_group, keys=keys, primaries=primaries,
        slots_split=slots_split, stage=stage, source_url=source_url, target_url=target_url,
        serverless_cache=serverless_cache, iam_users=tuple(iam_users), prefix=param_prefix,
        task_role_arn=task_role_arn, execution_role_arn=execution_role_arn, extra_args=tuple(stage_args))
    _finish(commands.ecs_task(request, clients=_aws_clients(), plan_dir=run_dir), as_json, render_ecs_task)


# --- after the cutover: archive, retire-check ---

@cli.command()
@run_dir_option()
@click.option("--to", "to_uri", required=True, metavar="s3://BUCKET/PREFIX", help="Where the archive goes.")
@click.option("--kms-key", default=None, metavar="ID",
              help="Encrypt with this KMS key (SSE-KMS); without it, SSE-S3.")
@click.option("--force", is_flag=True, help="Archive into a bucket whose public access block is not fully on.")
@json_option
@handle_errors
def archive(run_dir, to_uri, kms_key, force, as_json):
    """Upload the run dir's dump to S3 (encrypted, checksums verified); rerun to resume."""
    outcome = commands.archive(run_dir, to_uri, kms_key=kms_key, force=force, clients=_aws_clients(),
                               events=TERMINAL)
    _finish(outcome, as_json)


def _duration(label: str, text: str) -> float:
    from .cloud.cutover import parse_duration
    try:
        return parse_duration(text)
    except BadInput as exc:
        raise BadInput(f"{label}: {exc.message}", exc.hint) from None


@cli.command("retire-check")
@env_option
@click.option("--source", "source_url", required=True, metavar="URL", help="The old Redis (the migration's source).")
@run_dir_option(required=False)
@click.option("--watch", "watch", default="10m", show_default=True,
              help="How long to watch the old Redis for clients and writes.")
@click.option("--min-age", "min_age", default="24h", show_default=True,
              help="How long SSM must have pointed away from the old Redis (the soak period).")
@click.option("--archive", "archive_uri", default=None, metavar="s3://BUCKET/PREFIX",
              help="The archive to check: it must exist and its checksums verify.")
@click.option("--old-kind", type=click.Choice(("auto", "fargate", "elasticache")), default="auto", show_default=True,
              help="What the old Redis is, for the next step (auto: ElastiCache for *.cache.amazonaws.com).")
@param_prefix_option
@tls_insecure_option
@iam_options("source")
@json_option
@handle_errors
def retire_check(env, source_url, run_dir, watch, min_age, archive_uri, old_kind, param_prefix, tls_insecure,
                 source_iam, as_json):
    """GO / NO-GO for removing the old Redis, with evidence. Deletes nothing. Exit 0 GO, 1 NO-GO, 2 bad input."""
    from .cloud.retire import RetireOptions
    options = RetireOptions(env=env, prefix=param_prefix, watch_seconds=_duration("--watch", watch),
                            min_age_seconds=_duration("--min-age", min_age), archive=archive_uri, kind=old_kind)
    outcome = commands.retire_check(source_url, options, run_dir=run_dir, tls_insecure=tls_insecure,
                                    clients=_aws_clients(), events=TERMINAL, source_iam=source_iam)
    _finish(outcome, as_json, render_retire)


if __name__ == "__main__":
    main()
