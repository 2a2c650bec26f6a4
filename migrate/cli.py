"""Command line: parses options, calls one library function, prints the result, maps errors to exit codes.

Exit codes: 0 success; 1 differences found or a safety gate refused; 2 bad input;
3 a runtime failure (rerun the same command to resume).
"""

from __future__ import annotations

import functools
import sys
import traceback

import click

from . import __version__
from .errors import MigrateError
from .output import emit
from .redact import scrub


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="redis-migrate")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(debug: bool) -> None:
    """Move a production Redis into ElastiCache Serverless: plan, dump, replay, verify, cutover, rollback.

    Every stage is resumable: rerun the same command with the same --run-dir after a crash.
    """
    Context.debug = debug


def main() -> None:
    cli(prog_name="redis-migrate")


# Stage commands register themselves below, one section each.
# --- data path: dump, replay, run, status ---
# --- verify ---
# --- plan, cutover, rollback ---

def _aws_clients():
    """The boto3 clients for this invocation: whatever the caller put in click's context object, else the
    standard chain's (built lazily, so only commands that reach AWS need credentials)."""
    from .aws import Clients
    return click.get_current_context().ensure_object(Clients)


def _emit_and_exit(result: dict, as_json: bool, render, failed: bool) -> None:
    """Print the result; exit 1 when it is a refusal or has blockers (a dry run that would be refused)."""
    emit(result, as_json, render)
    if failed:
        sys.exit(1)


def env_option(func):
    return click.option("--env", required=True, help="Environment whose parameters to repoint, e.g. prod.")(func)


def param_prefix_option(func):
    return click.option("--param-prefix", default="/storefront/{env}/redis", show_default=True,
                        help="SSM path holding <prefix>/endpoint and <prefix>/port; {env} is substituted.")(func)


def switch_options(func):
    """Options cutover and rollback share."""
    func = click.option("--dry-run", is_flag=True, help="Show the before/after table and the checks; write nothing.")(func)
    func = click.option("--redeploy", multiple=True, metavar="CLUSTER/SERVICE",
                        help="Force a new ECS deployment afterwards, so the apps re-read SSM. Repeatable.")(func)
    func = click.option("--force", is_flag=True, help="Go ahead although a safety check failed.")(func)
    func = param_prefix_option(func)
    func = run_dir_option(required=False)(func)
    return env_option(json_option(func))


@cli.command()
@source_option
@target_option
@click.option("--serverless-cache", metavar="NAME", help="Check the target cache's limits and cost, and show its endpoint.")
@click.option("--env", help="Also show the current SSM endpoint/port of this environment.")
@param_prefix_option
@click.option("--sample", default=5000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Keys to sample for the type histogram, TTL share and largest keys.")
@click.option("--storage-headroom", default=1.5, show_default=True, type=click.FloatRange(1.0),
              help="The cache's storage maximum must hold the source data times this.")
@tls_insecure_option
@json_option
@handle_errors
def plan(source_url, target_url, serverless_cache, env, param_prefix, sample, storage_headroom, tls_insecure, as_json):
    """Read-only preflight: versions, replay mode, sizes, blockers, and a go / blockers verdict (exit 1)."""
    from . import plan as planning
    result = planning.plan(source_url, target_url, serverless_cache=serverless_cache, env=env, prefix=param_prefix,
                           sample=sample, storage_headroom=storage_headroom, tls_insecure=tls_insecure,
                           clients=_aws_clients())
    _emit_and_exit(result, as_json, planning.render, result["verdict"] != "go")


@cli.command()
@click.option("--target", "target_url", metavar="URL", help="Cut over to this Redis URL's host and port.")
@click.option("--serverless-cache", metavar="NAME", help="Cut over to this ElastiCache Serverless cache's endpoint.")
@click.option("--max-verify-age", default="30m", show_default=True,
              help="The run dir's passing verify must be newer than this (30m, 2h, 90s).")
@switch_options
@handle_errors
def cutover(env, target_url, serverless_cache, run_dir, param_prefix, max_verify_age, force, redeploy, dry_run, as_json):
    """Repoint the SSM endpoint/port at the target, after a fresh passing verify; recorded for rollback."""
    from . import cutover as switching
    result = switching.cutover(env, target_url=target_url, serverless_cache=serverless_cache, run_dir=run_dir,
                               prefix=param_prefix, max_verify_age=max_verify_age, force=force, redeploy=redeploy,
                               dry_run=dry_run, clients=_aws_clients())
    _emit_and_exit(result, as_json, switching.render, bool(result["refused"]))


@cli.command()
@switch_options
@handle_errors
def rollback(env, run_dir, param_prefix, force, redeploy, dry_run, as_json):
    """Put back the SSM values the cutover recorded (run dir, else the SSM labels)."""
    from . import cutover as switching
    result = switching.rollback(env, run_dir=run_dir, prefix=param_prefix, force=force, redeploy=redeploy,
                                dry_run=dry_run, clients=_aws_clients())
    _emit_and_exit(result, as_json, switching.render, bool(result["refused"]))


if __name__ == "__main__":
    main()
