"""Consecutive items in groups under a budget: the shape of every bounded batch (the dump's rounds of DUMPs,
descent's groups of slots, bring-back's straggler transactions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def budgeted(items: Iterable[T], weight: Callable[[T], int], budget: int, most: int | None = None) -> Iterator[list[T]]:
    """The items in order, in groups whose weights add up to at most `budget` and of at most `most` items; an item
    heavier than the budget goes alone. No group is empty."""
    group: list[T] = []
    used = 0
    for item in items:
        heavy = weight(item)
        if group and (used + heavy > budget or len(group) == most):
            yield group
            group, used = [], 0
        group.append(item)
        used += heavy
    if group:
        yield group
