"""Helpers shared by the reliability and security suite (faults, bad input, fuzzing, secrets)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from migrate.cli import cli

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    """What a CLI invocation left behind: exit code and the two streams."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def invoke(*args, env: dict | None = None) -> Outcome:
    """The CLI in this process (fast). Exceptions must not escape handle_errors."""
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def command(*args) -> list[str]:
    return [sys.executable, "-m", "migrate.cli", *[str(a) for a in args]]


def child_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_MIGRATE_")}
    env["TQDM_DISABLE"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def spawn(*args, env: dict | None = None, timeout: float = 120) -> Outcome:
    """The CLI as an operator runs it: a separate process, with a hard timeout (never a hang)."""
    done = subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout, env=child_env(env),
                          cwd=ROOT)
    return Outcome(done.returncode, done.stdout, done.stderr)


def popen(*args, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command(*args), env=child_env(env), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def assert_clean_error(outcome: Outcome, code: int, *needles: str, secrets: tuple[str, ...] = ()) -> None:
    """A clear failure: the expected exit code, a message with a hint, no traceback, no secret."""
    assert outcome.exit_code == code, str(outcome)
    assert "Traceback" not in outcome.output, str(outcome)
    assert "unexpected" not in outcome.stderr, str(outcome)
    lowered = outcome.stderr.lower()
    for needle in needles:
        assert needle.lower() in lowered, f"{needle!r} not in the message:\n{outcome}"
    if code != 2 or "Usage:" not in outcome.stderr:  # click's own usage errors name the option instead
        assert "hint:" in outcome.stderr, str(outcome)
    for secret in secrets:
        if secret:
            assert secret not in outcome.output, f"secret leaked:\n{outcome}"


def copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, copy_function=shutil.copy2)
    return destination


def ledger(run_dir: Path, name: str) -> dict:
    """A run-dir ledger as JSON, or {} while it is missing or half-written (tests poll it as a stage runs)."""
    try:
        return json.loads((run_dir / f"{name}.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


class Stopped(Exception):
    """Stops an in-process dump half way, as a kill would."""


def half_dump(source_url: str, run_dir: Path, options, after: int) -> None:
    """A dump (pipeline.dump_stage, in this process) stopped once `after` keys went by: its ledger holds a
    cursor in the middle of the keyspace and the segments written so far."""
    import contextlib

    import pytest

    from migrate.commands import open_source
    from migrate.net.endpoints import Endpoint
    from migrate.pipeline import dump_stage
    from migrate.rundir import RunDir
    seen = [0]

    def progress(*_args, **_kwargs):
        def update(count: int) -> None:
            seen[0] += count
            if seen[0] > after:
                raise Stopped()
        return contextlib.nullcontext(update)

    with pytest.raises(Stopped):
        dump_stage(RunDir(run_dir, create=True), open_source(Endpoint.from_url("source", source_url), 0), options,
                   progress)
