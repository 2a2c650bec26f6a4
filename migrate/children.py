"""Child processes (the dump of `run`, verify's scan workers): they die with the process that started
them, and their errors reach it typed.

A `run` killed with SIGKILL cannot stop its children itself. A child left running would go on
reading, hold the run lock (its fork inherited the lock's file descriptor) so that the rerun is
refused as locked, and keep the caller's output pipes open. So each child asks the kernel for
SIGKILL when its parent dies (PR_SET_PDEATHSIG), and exits at once if the parent is already gone:
a parent that died between fork and that request would otherwise never be noticed.

An error in a child is sent to the parent as plain data, (type name, message, hint), and raised
there as the same typed error: the operator sees its message and hint and its exit code, never a
child's traceback.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from typing import NoReturn

from . import errors

PR_SET_PDEATHSIG = 1

Relayed = tuple[str, str, str]  # (error type name, message, hint)


def die_with_parent(parent_pid: int | None = None) -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: nothing to ask for
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def relay_errors(work: Callable[[], None], send: Callable[[Relayed], None],
                 unexpected: Callable[[Exception], str], hint: str) -> int:
    """Run a child's work; send its error, if any, to the parent. Returns the exit code the child should
    end with. An error that is not a MigrateError becomes a RuntimeFailure saying `unexpected(exc)`."""
    try:
        work()
        return 0
    except errors.MigrateError as exc:
        send((type(exc).__name__, exc.message, exc.hint))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - reported by the parent like the CLI would, never as a traceback
        send(("RuntimeFailure", unexpected(exc), hint))
        return errors.RuntimeFailure.exit_code


def raise_relayed(relayed: Relayed) -> NoReturn:
    """In the parent: raise the child's error as the typed error it was."""
    name, message, hint = relayed
    raise getattr(errors, name, errors.RuntimeFailure)(message, hint)
