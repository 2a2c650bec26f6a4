"""Worker processes: one per source primary, up to --workers at once, each with its own connections.

A worker sends what it did (progress, ledger checkpoints) to this process through its pipe; this
process is the only writer of the ledger file, so every master keeps its own checkpoint in it, and a
kill -9 of anything (a worker, or the parent, whose workers then die with it) leaves a ledger that
resumes exactly. The parent blocks on the pipes (multiprocessing.connection.wait): no polling.

A worker's error reaches the parent typed (children.relay_errors) and stops the other workers.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

from .children import die_with_parent, raise_relayed, relay_errors
from .errors import RuntimeFailure

Send = Callable[[Any], None]


def default_workers() -> int:
    """--workers' default: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_workers(tasks: Iterable, work: Callable[[Any, Send], None], receive: Callable[[Any], None],
                workers: int, name: str = "worker") -> None:
    """Run `work(task, send)` for each task in a child process, at most `workers` at once; every message a
    child sends is handed to `receive` here, in order per child. Returns when all are done; raises the
    first child's error (the others are stopped)."""
    context = multiprocessing.get_context("fork")
    pending, running = list(tasks), {}
    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                task = pending.pop(0)
                mine, theirs = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(work, task, theirs, os.getpid()),
                                          name=f"{name}-{task}")  # not a daemon: a dump worker in `run`'s child
                process.start()
                theirs.close()
                running[mine] = process
            for conn in wait(list(running)):
                _take(conn, running, receive)
    finally:
        for conn, process in running.items():
            process.kill()
            process.join()
            conn.close()


def _take(conn: Connection, running: dict, receive: Callable[[Any], None]) -> None:
    """One message from a child; at its end, its exit code (an error it relayed is raised as it was)."""
    try:
        kind, body = conn.recv()
    except EOFError:
        process = running.pop(conn)
        process.join()
        conn.close()
        if process.exitcode != 0:
            raise RuntimeFailure(f"{process.name} stopped with exit code {process.exitcode}",
                                 "rerun the same command: it resumes from the last checkpoint") from None
        return
    if kind == "error":
        raise_relayed(body)
    receive(body)


def _child(work: Callable[[Any, Send], None], task, conn: Connection, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    lock = threading.Lock()  # the dump's segment-writer thread sends checkpoints while the scan sends progress

    def send(message, kind: str = "message") -> None:
        with lock:
            conn.send((kind, message))

    code = relay_errors(lambda: work(task, send), lambda relayed: send(relayed, "error"),
                        lambda exc: f"unexpected {type(exc).__name__} in worker {task}: {exc}",
                        "rerun with --debug for details; the run directory is safe to resume")
    conn.close()
    os._exit(code)  # no atexit handlers of the parent's (its lock, its temp files) in a forked child
