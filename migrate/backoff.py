"""The one retry pace of the copy: waits from 50 ms doubling up to 5 s, for at most N seconds.

Dump's reconnect loop and replay's write and existence retries each decide what to retry and what to
say when time runs out; this only keeps the clock. A loop that makes progress starts a new Backoff,
so the limit reads as "for up to N seconds without progress".
"""

from __future__ import annotations

import time

FIRST_DELAY = 0.05
LONGEST_DELAY = 5.0


class Backoff:
    """Exponential waits with a deadline set when it is created."""

    def __init__(self, seconds: float, first: float = FIRST_DELAY, longest: float = LONGEST_DELAY) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.delay = first
        self.longest = longest

    def expired(self) -> bool:
        """True once the deadline has passed: the caller gives up with its own message."""
        return time.monotonic() > self.deadline

    def next_delay(self) -> float:
        """The wait before the next attempt (each one twice the last, up to the longest)."""
        delay, self.delay = self.delay, min(self.delay * 2, self.longest)
        return delay

    def wait(self) -> None:
        time.sleep(self.next_delay())
