"""Child processes (the dump of `run`, verify's scan workers) die with the process that started them.

A `run` killed with SIGKILL cannot stop its children itself. A child left running would go on
reading, hold the run lock (its fork inherited the lock's file descriptor) so that the rerun is
refused as locked, and keep the caller's output pipes open. So each child asks the kernel for
SIGKILL when its parent dies (PR_SET_PDEATHSIG), and exits at once if the parent is already gone:
a parent that died between fork and that request would otherwise never be noticed.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: nothing to ask for
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
