"""A small TCP fault injector for tests: a threaded 127.0.0.1 forwarder to one upstream.

It forwards bytes both ways, and on demand or at random it:
  - cuts every live connection (`cut_all`), with a FIN or an RST (SO_LINGER 0), as a dropped link does;
  - cuts each connection after a random number of forwarded bytes (`cut_after_bytes=(lo, hi)`), drawn
    from a seeded RNG, so a fault lands at a reproducible point of the traffic, up to `max_cuts` times;
  - adds latency to every chunk it forwards (`latency_ms`, per direction);
  - rewrites what clients send through a per-connection filter (`client_filter`), e.g. `ArgumentLimit`,
    which makes the server refuse commands over ElastiCache Serverless's argument limit.

It is bounded: at most `max_connections` at once, and it stops itself after `max_seconds`, so a
forgotten proxy never outlives its test. Only 127.0.0.1 is ever listened on or connected to.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable

_CHUNK = 64 * 1024
_TICK = 0.1


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket, budget: int | None) -> None:
        self.client = client
        self.upstream = upstream
        self.budget = budget  # bytes left before this connection is cut (None: never)
        self.client_filter: Callable[[bytes], bytes] | None = None
        self.closed = False
        self.lock = threading.Lock()

    def close(self, reset: bool) -> bool:
        with self.lock:
            if self.closed:
                return False
            self.closed = True
        for sock in (self.client, self.upstream):
            try:
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
        return True


class FaultProxy:
    def __init__(self, upstream_port: int, *, seed: int = 0, latency_ms: float = 0.0,
                 upstream_latency_ms: float | None = None, cut_after_bytes: tuple[int, int] | None = None,
                 max_cuts: int = 0, max_connections: int = 256, max_seconds: float = 300.0,
                 listen: socket.socket | None = None,
                 client_filter: Callable[[], Callable[[bytes], bytes]] | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.client_filter = client_filter
        self.rng = random.Random(seed)
        self.latency = latency_ms / 1000.0                     # added to chunks going to the client
        self.upstream_latency = (latency_ms if upstream_latency_ms is None else upstream_latency_ms) / 1000.0
        self.cut_after_bytes = cut_after_bytes
        self.max_cuts = max_cuts
        self.max_connections = max_connections
        self.max_seconds = max_seconds
        self.cuts = 0
        self.connections = 0
        self.forwarded = 0  # bytes sent on to clients: how far the traffic through the proxy has got
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = listen or self.listener()
        self._listener.settimeout(_TICK)
        self._threads: list[threading.Thread] = []
        self._stall_until = 0.0

    @staticmethod
    def listener() -> socket.socket:
        """A listening socket on a free 127.0.0.1 port (made early when a server must know the port)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        return sock

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._started = time.monotonic()
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.cut_all(count=False)
        try:
            self._listener.close()
        except OSError:
            pass
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    # --- faults --------------------------------------------------------------------------------

    def cut_all(self, reset: bool | None = None, count: bool = True) -> int:
        """Close every live connection now; returns how many were cut."""
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        cut = 0
        for pair in pairs:
            if pair.close(self.rng.random() < 0.5 if reset is None else reset):
                cut += 1
        if count:
            self.cuts += cut
        return cut

    def live(self) -> int:
        """How many connections are open through the proxy now."""
        with self._lock:
            return len(self._pairs)

    def set_latency(self, ms: float) -> None:
        self.latency = self.upstream_latency = ms / 1000.0

    def configure(self, *, seed: int = 0, latency_ms: float = 0.0, cut_after_bytes: tuple[int, int] | None = None,
                  max_cuts: int = 0) -> FaultProxy:
        """New faults for the next connections (a proxy shared by several tests); counters restart."""
        self.rng = random.Random(seed)
        self.set_latency(latency_ms)
        self.cut_after_bytes = cut_after_bytes
        self.max_cuts = max_cuts
        self.cuts = 0
        self.connections = 0
        self._stall_until = 0.0
        return self

    def stall(self, seconds: float) -> None:
        """Forward nothing for a while (a black hole): only socket timeouts get a client out of this."""
        self._stall_until = time.monotonic() + seconds

    def _budget(self) -> int | None:
        if self.cut_after_bytes is None or self.cuts >= self.max_cuts:
            return None
        return self.rng.randint(*self.cut_after_bytes)

    # --- forwarding ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._started > self.max_seconds:
                self._spawn(self.stop)
                return
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                crowded = len(self._pairs) >= self.max_connections
            if crowded:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()  # the upstream is down: the client sees the connection refused/closed
                continue
            for sock in (client, upstream):
                sock.settimeout(_TICK)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream, self._budget())
            pair.client_filter = self.client_filter() if self.client_filter else None
            with self._lock:
                self._pairs.add(pair)
                self.connections += 1
            self._spawn(self._pump, pair, client, upstream, self.upstream_latency_ref)
            self._spawn(self._pump, pair, upstream, client, self.latency_ref)

    def upstream_latency_ref(self) -> float:
        return self.upstream_latency

    def latency_ref(self) -> float:
        return self.latency

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, latency) -> None:
        while not self._stop.is_set() and not pair.closed:
            try:
                data = src.recv(_CHUNK)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            delay = latency()
            if delay:
                time.sleep(delay)
            while time.monotonic() < self._stall_until and not self._stop.is_set():
                time.sleep(_TICK)
            if self._spend(pair, len(data)) and self._cut(pair):
                return
            if src is pair.client and pair.client_filter:
                data = pair.client_filter(data)
            if src is pair.upstream:
                self.forwarded += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(pair)

    def _spend(self, pair: _Pair, size: int) -> bool:
        """Charge forwarded bytes to the connection's budget; True when it is time to cut it."""
        with pair.lock:
            if pair.budget is None:
                return False
            pair.budget -= size
            return pair.budget <= 0

    def _cut(self, pair: _Pair) -> bool:
        with self._lock:
            if self.cuts >= self.max_cuts:
                pair.budget = None
                return False
            self.cuts += 1
            self._pairs.discard(pair)
        pair.close(self.rng.random() < 0.5)
        return True

    def _close(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        pair.close(False)


class ArgumentLimit:
    """A client filter factory: a command with more than `limit` arguments (name included) reaches the server
    as an unknown command, so it is refused in order, as ElastiCache Serverless refuses it. Counts the
    refusals and the largest command seen over every connection."""

    def __init__(self, limit: int = 3999) -> None:
        self.limit = limit
        self.refused = 0
        self.largest = 0

    def __call__(self) -> Callable[[bytes], bytes]:
        return _CommandStream(self).feed


class _CommandStream:
    """One connection's RESP stream from the client, cut into whole commands."""

    REFUSED = b"*1\r\n$23\r\nOVER-3999-ARGUMENTS-ERR\r\n"

    def __init__(self, limit: ArgumentLimit) -> None:
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out, pos = bytearray(), 0
        while (end := self._command_end(pos)) is not None:
            stop, count = end
            self.limit.largest = max(self.limit.largest, count)
            if count > self.limit.limit:
                self.limit.refused += 1
                out += self.REFUSED
            else:
                out += self.buffer[pos:stop]
            pos = stop
        del self.buffer[:pos]
        return bytes(out)

    def _command_end(self, pos: int) -> tuple[int, int] | None:
        """Where the RESP array starting at `pos` ends, and its argument count; None if it is not all here."""
        line = self.buffer.find(b"\r\n", pos)
        if line < 0:
            return None
        assert self.buffer[pos:pos + 1] == b"*", "the tool sends RESP arrays only"
        count = int(self.buffer[pos + 1:line])
        pos = line + 2
        for _ in range(count):
            line = self.buffer.find(b"\r\n", pos)
            if line < 0:
                return None
            pos = line + 2 + int(self.buffer[pos + 1:line]) + 2
            if pos > len(self.buffer):
                return None
        return pos, count
