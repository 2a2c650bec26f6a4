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

if __name__ == "__main__":
    main()
