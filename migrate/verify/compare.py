"""One key's two views compared: the kinds of difference, and how a difference is reported."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

from ..keynames import escaped
from ..net.keyspace import NO_EXPIRY
from .readers import ABSENT, View

KINDS = ("missing", "extra", "type", "value", "ttl", "changing")
EXPIRED = "expired"


@dataclass
class Difference:
    key: bytes
    kind: str
    source: View
    target: View

    def to_dict(self, now_ms: int) -> dict:
        return {"key": base64.b64encode(self.key).decode(), "key_text": escaped(self.key), "kind": self.kind,
                "source": _summary(self.source, now_ms), "target": _summary(self.target, now_ms)}


def _summary(view: View, now_ms: int) -> dict | None:
    """Type, length and TTL of one side: never the value."""
    if not view.present:
        return None
    ttl = NO_EXPIRY if view.expire_at == NO_EXPIRY else max(view.expire_at - now_ms, 0)
    return {"type": view.type, "length": view.length, "ttl_ms": ttl}


def classify(ref: View, tgt: View, now_ms: int, tolerance_ms: int) -> str | None:
    """The kind of difference between the reference and the target, EXPIRED, or None if equal."""
    if not ref.present and not tgt.present:
        return None
    if not ref.present:
        return EXPIRED if _due(tgt, now_ms, tolerance_ms) else "extra"
    if not tgt.present:
        return EXPIRED if _due(ref, now_ms, tolerance_ms) else "missing"
    if ref.type != tgt.type:
        return "type"
    if ref.digest != tgt.digest:
        return "value"
    if (ref.expire_at == NO_EXPIRY) != (tgt.expire_at == NO_EXPIRY):
        return "ttl"
    if abs(ref.expire_at - tgt.expire_at) > tolerance_ms:
        return "ttl"
    return None


def _due(view: View, now_ms: int, tolerance_ms: int) -> bool:
    """A key whose expiry is past, or within the tolerance: the other side may already have dropped it."""
    return view.expire_at != NO_EXPIRY and view.expire_at <= now_ms + tolerance_ms


def moved(before: View, after: View, tolerance_ms: int) -> bool:
    if (before.type, before.digest) != (after.type, after.digest):
        return True
    if (before.expire_at == NO_EXPIRY) != (after.expire_at == NO_EXPIRY):
        return True
    return abs(before.expire_at - after.expire_at) > tolerance_ms


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Pass:
    """What the first look found: keys that differ (with both views) and the counts."""

    candidates: dict[bytes, tuple[View, View]]
    counts: dict = field(default_factory=dict)
    expired: int = 0    # keys gone from both sides before they could be compared one by one: had a TTL
    vanished: int = 0   # ... and had none


def compare_views(ref: dict[bytes, View], tgt: dict[bytes, View], tolerance_ms: int) -> dict[bytes, tuple[View, View]]:
    """Keys that differ, or that expired in between, at first sight: the ones to read again."""
    candidates = {}
    now = now_ms()
    for key in ref.keys() | tgt.keys():
        pair = (ref.get(key, ABSENT), tgt.get(key, ABSENT))
        if classify(*pair, now, tolerance_ms) is not None:
            candidates[key] = pair
    return candidates


