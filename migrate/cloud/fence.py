"""The cutover's write fence: CLIENT PAUSE <ms> WRITE on every source primary, lifted right after the flip.

While it holds, the apps' writes to the old Redis wait (reads go on; expiry and eviction stop), so sync can
apply every change made before it and the SSM flip happens on a data set that holds still. The pause is
given a length: if cutover dies (kill -9) between fence and flip, it lifts itself after `fence_ms`, and SSM
is untouched. Where CLIENT PAUSE is refused (ElastiCache renames it away; an ACL may deny it) the cutover
stops with exit 2 unless the operator accepts the race with --no-fence.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from ..errors import BadInput, RuntimeFailure
from ..net.endpoints import Node, Topology, translated_errors

REFUSALS = ("unknown command", "unknown subcommand", "noperm", "no permissions", "not allowed", "disabled")
NO_FENCE_HINT = ("ElastiCache does not allow CLIENT PAUSE: pass --no-fence to cut over without it (writes in flight "
                 "then race the flip; sync forwards them after it, and the race window is reported), or allow "
                 "CLIENT PAUSE for the source user")
Step = Callable[[str, Callable[[], object]], object]


def _direct(description: str, call: Callable[[], object]) -> object:
    return call()


class Fence:
    """Pause writes on every source primary; `lift` unpauses them and measures how long the fence held."""

    def __init__(self, source: Topology, fence_ms: int, step: Step = _direct) -> None:
        self.source = source
        self.fence_ms = fence_ms
        self.step = step
        self.paused: list[Node] = []
        self.started: float | None = None
        self.length_ms: int | None = None
        self.clients: dict[str, redis.Redis] = {}

    def raise_fence(self) -> float:
        """Pause every primary (refused: unpause those already paused, then BadInput); the wall-clock start."""
        self.connect()
        self.started = time.monotonic()
        wall = time.time()
        for node in self.source.masters:
            try:
                self.step(f"CLIENT PAUSE {self.fence_ms} WRITE on source primary {node.name}",
                          lambda node=node: self._call(node, "PAUSE", str(self.fence_ms), "WRITE"))
            except redis.ResponseError as exc:
                self.lift()
                if any(word in str(exc).lower() for word in REFUSALS):
                    raise BadInput(f"source primary {node.name} refused CLIENT PAUSE ({str(exc).splitlines()[0]}): "
                                   "the write fence cannot be raised", NO_FENCE_HINT) from None
                raise RuntimeFailure(f"CLIENT PAUSE failed on source primary {node.name}: {exc}",
                                     "nothing was flipped; check the source and rerun the cutover") from None
            self.paused.append(node)
        return wall

    def lift(self) -> int | None:
        """CLIENT UNPAUSE wherever the fence was raised (each tried even if one fails); the fence's length in ms."""
        failures = []
        for node in self.paused:
            try:
                self.step(f"CLIENT UNPAUSE on source primary {node.name}",
                          lambda node=node: self._call(node, "UNPAUSE"))
            except (redis.RedisError, OSError, RuntimeFailure) as exc:
                failures.append(f"{node.name}: {exc}")
        if self.started is not None and self.paused:
            self.length_ms = int((time.monotonic() - self.started) * 1000)
        self.paused = []
        if failures:
            raise RuntimeFailure(f"CLIENT UNPAUSE failed on {'; '.join(failures)}",
                                 f"the pause lifts itself {self.fence_ms} ms after it began; check the source")
        return self.length_ms

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000) if self.started is not None else 0

    def connect(self) -> None:
        """Open (and PING) a connection to each primary before the fence starts, so its length is only the work."""
        for node in self.source.masters:
            if node.name not in self.clients:
                client = self.source.client(node)
                with translated_errors(self.source.endpoint):
                    client.ping()
                self.clients[node.name] = client

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients = {}

    def _call(self, node: Node, *args: str):
        client = self.clients.get(node.name) or self.source.client(node)
        try:
            return client.execute_command("CLIENT", *args)
        except redis.ResponseError:
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise RuntimeFailure(f"source primary {node.name}: CLIENT {args[0]} failed ({exc})",
                                 f"a pause lifts itself {self.fence_ms} ms after it began; check the source") from None
