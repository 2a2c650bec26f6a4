"""The command layer as a library: stages tell their warnings to a callback and print nothing; a child
process's error reaches its parent as the typed error it was."""

from __future__ import annotations

import multiprocessing

import pytest

from migrate import commands
from migrate.children import raise_relayed, relay_errors
from migrate.datapath.replay import ReplayOptions
from migrate.errors import RuntimeFailure, Unreachable
from migrate.events import Events


def test_stages_tell_their_warnings_to_the_callback_and_print_nothing(standalone_source, serverless_target,
                                                                      run_dir, capfd):
    standalone_source.client().mset({f"k:{i}": i for i in range(50)})
    standalone_source.client(5).set("elsewhere", "x")
    warnings: list[str] = []
    events = Events(warn=warnings.append)

    dumped = commands.dump(standalone_source.url(), str(run_dir), commands.Selection(),
                           checks=commands.SourceChecks(ignore_other_dbs=True), tls_insecure=True, events=events)
    replayed = commands.replay(serverless_target.url(), str(run_dir), ReplayOptions(), events=events)

    assert warnings == ["--tls-insecure: TLS certificates are NOT verified; never use this in production",
                        "--ignore-other-dbs: the source's other databases are not migrated (db5: 1 keys)"]
    assert (dumped.exit_code, dumped.refusal, dumped.result["dump"]["dumped"]) == (0, None, 50)
    assert (replayed.exit_code, replayed.refusal, replayed.result["replay"]["restored"]) == (0, None, 50)
    assert serverless_target.first.client().dbsize() == 50
    assert capfd.readouterr() == ("", "")


def _child(work, queue) -> None:
    raise SystemExit(relay_errors(work, queue.put, lambda exc: f"unexpected {type(exc).__name__}: {exc}",
                                  "rerun it"))


def _unreachable() -> None:
    raise Unreachable("cannot reach 10.0.0.1:6379", "check the security group")


def _bug() -> None:
    raise KeyError("slot")


@pytest.mark.parametrize("work, error, code, message, hint", [
    (_unreachable, Unreachable, 2, "cannot reach 10.0.0.1:6379", "check the security group"),
    (_bug, RuntimeFailure, 3, "unexpected KeyError: 'slot'", "rerun it"),
])
def test_a_child_process_error_reaches_the_parent_typed(work, error, code, message, hint):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(work, queue))
    child.start()
    child.join(30)
    assert child.exitcode == code
    with pytest.raises(error) as raised:
        raise_relayed(queue.get(timeout=5))
    assert (raised.value.message, raised.value.hint, raised.value.exit_code) == (message, hint, code)
