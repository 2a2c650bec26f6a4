"""Printing results: a human table or JSON, always scrubbed of secrets, plus tqdm progress bars."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Callable, Iterator

import click
from tqdm import tqdm

from .redact import scrub

ProgressCallback = Callable[[int], None]
ProgressFactory = Callable[..., AbstractContextManager[ProgressCallback]]  # progress_bar's signature


def no_progress(*_args, **_kwargs) -> AbstractContextManager[ProgressCallback]:
    return nullcontext(lambda n: None)


def emit(result: dict, as_json: bool, render: Callable[[dict], str] | None = None) -> None:
    """Print a result for a machine (--json) or a person, with every known secret scrubbed."""
    if as_json:
        click.echo(scrub(json.dumps(result, indent=2, sort_keys=True, default=str)))
    else:
        click.echo(scrub(render(result) if render else table(result)))


def table(rows: dict, indent: str = "") -> str:
    """A plain two-column table of a (possibly nested) dict."""
    width = max((len(str(k)) for k in rows), default=0)
    lines = []
    for key, value in rows.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:")
            lines.append(table(value, indent + "  "))
        else:
            lines.append(f"{indent}{str(key).ljust(width)}  {value}")
    return "\n".join(lines)


def warn(message: str) -> None:
    click.echo(scrub(f"warning: {message}"), err=True)


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "keys", initial: int = 0
                 ) -> Iterator[ProgressCallback]:
    """A tqdm bar with rate and ETA on a TTY; silent otherwise (tqdm's disable=None does that)."""
    bar = tqdm(total=total, desc=description, unit=unit, unit_scale=True, dynamic_ncols=True, initial=initial,
               disable=None, file=sys.stderr, mininterval=0.5)
    try:
        yield bar.update
    finally:
        bar.close()
