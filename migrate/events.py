"""What a stage tells the operator while it runs: progress in keys, and warnings.

The stages never print. They take a progress factory and a `warn` callback from the command layer;
the command line passes console.py's (a tqdm bar, a `warning:` line on stderr), a library caller
gets silence by default.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

ProgressCallback = Callable[[int], None]
ProgressFactory = Callable[..., AbstractContextManager[ProgressCallback]]  # (description, total, unit=, initial=)
Warn = Callable[[str], None]


def no_progress(*_args, **_kwargs) -> AbstractContextManager[ProgressCallback]:
    return nullcontext(lambda n: None)


def no_warning(_message: str) -> None:
    """The default `warn`: a library caller that passes none hears nothing."""


@dataclass(frozen=True)
class Events:
    """Where a command's stages report to: one progress factory and one `warn`."""

    progress: ProgressFactory = no_progress
    warn: Warn = no_warning


SILENT = Events()  # a library caller's default: no bar, no warning
