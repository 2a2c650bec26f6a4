"""Segment storage in the run directory: written atomically, immutable afterwards, listed in replay order."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import BadInput
from ..rundir import RunDir, atomic_write
from .segments import Segment, load_segment

_NAME = re.compile(r"^m(\d{3})-(\d{8})\.seg$")


def segment_path(run_dir: RunDir, master: int, seq: int) -> Path:
    return run_dir.segments / f"m{master:03d}-{seq:08d}.seg"


def write_segment(run_dir: RunDir, master: int, seq: int, data: bytes) -> Path:
    """Temp name, fsync, rename: a segment is either whole or absent."""
    path = segment_path(run_dir, master, seq)
    atomic_write(path, data)
    return path


def segment_id(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    if not match:
        raise BadInput(f"foreign file {path} in the dump store",
                       "the segments directory holds only redis-migrate segments: move that file out")
    return int(match.group(1)), int(match.group(2))


def list_segments(run_dir: RunDir) -> list[Path]:
    """Every durable segment in (master, sequence) order. Leftover temp files are ignored."""
    paths = [p for p in run_dir.segments.iterdir() if not p.name.startswith(".")]
    return sorted(paths, key=segment_id)


class LocalSegments:
    """The run dir's segments as replay's and verify's source (the other one: an S3 archive, cloud/archive.py).

    A source lists segment names in replay order and loads one checked segment at a time."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    @property
    def label(self) -> str:
        return str(self.run_dir.path)

    def names(self) -> list[str]:
        return [path.name for path in list_segments(self.run_dir)] if self.run_dir.segments.is_dir() else []

    def load(self, name: str) -> Segment:
        return load_segment(self.run_dir.segments / name)
