"""A local stand-in for ElastiCache's IAM check: an asyncio TCP proxy in front of a real, password-protected
redis-server.

A connection is accepted only if its first command is `AUTH user token` or `HELLO 3 AUTH user token [...]`,
where the token is a SigV4 query-signed `GET <cache>/?Action=connect&User=<user>[&ResourceType=...]` that:
- verifies against the test credentials (the signature is recomputed here from scratch, independently of
  botocore's signer, which the tool uses);
- names this proxy's cache as host, `Action=connect`, the AUTH's user, the expected ResourceType (only for a
  serverless cache), service `elasticache` and the test region;
- has not expired on the proxy's clock (X-Amz-Date + X-Amz-Expires, at most 900 s).
The proxy then swaps in the backend's password (`AUTH <password>` / `HELLO 3 AUTH default <password>`) and
pipes bytes both ways. Anything else is answered with ElastiCache's WRONGPASS (or NOAUTH) and closed.

**The clock.** `advance(seconds)` makes time jump for everyone by `seconds`: the proxy's now moves forward,
and a token dated before the jump counts as signed `seconds` earlier than its X-Amz-Date says (the tool's
own clock is never touched: it keeps signing with the real time, which the proxy reads as after the jump).
So after `advance(16 * 60)` every token signed before is expired, and only a token signed afterwards passes.

`cut_all()` closes every proxied connection; `advance_and_cut_after_bytes=(n, seconds)` does both at once,
from inside the proxy, once the clients have sent n bytes (a deterministic point of a run's traffic).
Only 127.0.0.1 is listened on or connected to.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import threading
import time
from urllib.parse import parse_qsl, quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
NOAUTH = b"-NOAUTH Authentication required.\r\n"
MAX_EXPIRES = 900
ALLOWED_SKEW = 300


def parse_command(buffer: bytes) -> tuple[list[bytes], int] | None:
    """The first RESP array of bulk strings in `buffer` and the bytes it takes; None if incomplete.
    Raises ValueError on anything else (an inline command, a non-array)."""
    if not buffer.startswith(b"*"):
        if buffer:
            raise ValueError("not a RESP array")
        return None
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    count, at, args = int(buffer[1:end]), end + 2, []
    for _ in range(count):
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        if buffer[at:at + 1] != b"$":
            raise ValueError("not a bulk string")
        length = int(buffer[at + 1:end])
        start = end + 2
        if len(buffer) < start + length + 2:
            return None
        args.append(buffer[start:start + length])
        at = start + length + 2
    return args, at


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_signature(secret_key: str, host: str, params: list[tuple[str, str]], amz_date: str, scope: str) -> str:
    """SigV4 for a query-signed GET / with only `host` signed and an empty body, from the spec."""
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))
    canonical = "\n".join(["GET", "/", query, f"host:{host}\n", "host", EMPTY_SHA256])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, service, terminal = scope.split("/")
    key = _hmac(("AWS4" + secret_key).encode(), date)
    for part in (region, service, terminal):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class IamProxy:
    def __init__(self, backend_port: int, backend_password: str, *, cache: str, access_key: str, secret_key: str,
                 region: str, serverless: bool = True) -> None:
        self.backend_port = backend_port
        self.backend_password = backend_password.encode()
        self.cache = cache
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.serverless = serverless
        self.port = 0
        self.accepted = 0
        self.refusals: list[str] = []  # why each refused connection was refused
        self.signatures: set[str] = set()  # of accepted tokens: tests look for them in the tool's output
        self.advance_and_cut_after_bytes: tuple[int, float] | None = None
        self.accepted_before_cut: int | None = None  # connections accepted when that trigger fired
        self._client_bytes = 0
        self._jumps: list[tuple[float, float]] = []  # (real time of the jump, floored to the second; seconds)
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()

    # --- control, from the test's thread ---

    def start(self) -> IamProxy:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop).result(10)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.cut_all()
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def advance(self, seconds: float) -> None:
        """Time jumps forward by `seconds` (see the module's docstring)."""
        with self._lock:
            self._jumps.append((float(int(time.time())), seconds))

    def cut_all(self) -> None:
        self._loop.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def url(self, user: str) -> str:
        return f"redis://{user}@127.0.0.1:{self.port}/0"

    # --- the check ---

    def check(self, user: str, token: str) -> str | None:
        """Why the token is refused for `user`, or None when it passes."""
        host, sep, query = token.partition("/?")
        if not sep:
            return "not a presigned URL"
        params = parse_qsl(query, keep_blank_values=True)
        fields = dict(params)
        if len(fields) != len(params):
            return "a repeated query parameter"
        if host != self.cache:
            return f"signed for host {host!r}, not {self.cache!r}"
        if fields.get("Action") != "connect":
            return "Action is not connect"
        if fields.get("User") != user:
            return "User is not the AUTH user"
        expected_type = "ServerlessCache" if self.serverless else None
        if fields.get("ResourceType") != expected_type:
            return f"ResourceType is {fields.get('ResourceType')!r}, not {expected_type!r}"
        if fields.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or fields.get("X-Amz-SignedHeaders") != "host":
            return "not a SigV4 signature of the host header"
        credential = fields.get("X-Amz-Credential", "").split("/")
        amz_date = fields.get("X-Amz-Date", "")
        if (len(credential) != 5 or credential[0] != self.access_key or credential[2] != self.region
                or credential[3] != "elasticache" or credential[4] != "aws4_request"
                or credential[1] != amz_date[:8]):
            return "credential scope is not this key, region and service"
        signature = fields.pop("X-Amz-Signature", "")
        unsigned = [(k, v) for k, v in params if k != "X-Amz-Signature"]
        expected = sigv4_signature(self.secret_key, host, unsigned, amz_date, "/".join(credential[1:]))
        if not hmac.compare_digest(signature, expected):
            return "signature does not match"
        return self._expired(amz_date, fields.get("X-Amz-Expires", ""))

    def _expired(self, amz_date: str, expires: str) -> str | None:
        try:
            signed = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
            lifetime = int(expires)
        except ValueError:
            return "bad X-Amz-Date or X-Amz-Expires"
        if not 0 < lifetime <= MAX_EXPIRES:
            return f"X-Amz-Expires {lifetime} is over {MAX_EXPIRES}"
        # A token dated before a jump was signed that much earlier in the proxy's time; one dated from the
        # jump's second on was signed after it (its date is the real time, which already counts the jump).
        age = time.time() - signed + sum(seconds for jumped_at, seconds in self._jumps if jumped_at > signed)
        if age > lifetime:
            return f"token expired ({age - lifetime:.0f} s ago)"
        if age < -ALLOWED_SKEW:
            return "token from the future"
        return None

    # --- the connection ---

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream = None
        try:
            buffer = b""
            while (parsed := parse_command(buffer)) is None:
                data = await reader.read(65536)
                if not data:
                    return
                buffer += data
            args, used = parsed
            first, rest = self._login(args), buffer[used:]
            if isinstance(first, str):
                self.refusals.append(first)
                writer.write(NOAUTH if first == "no AUTH first" else WRONGPASS)
                await writer.drain()
                return
            self.accepted += 1
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.backend_port)
            self._writers.add(upstream)
            upstream.write(first + rest)
            self._count(len(rest))
            await asyncio.gather(self._pipe(reader, upstream, count=True), self._pipe(up_reader, writer))
        except (ValueError, ConnectionError):
            self.refusals.append("bad RESP")
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    def _login(self, args: list[bytes]) -> bytes | str:
        """The backend's login to send instead of the client's, or why the client's is refused."""
        name = args[0].upper() if args else b""
        if name == b"AUTH" and len(args) == 3:
            user, token, rewritten = args[1], args[2], pack(b"AUTH", self.backend_password)
        elif name == b"HELLO" and len(args) >= 5 and args[2].upper() == b"AUTH":
            user, token = args[3], args[4]
            rewritten = pack(b"HELLO", args[1], b"AUTH", b"default", self.backend_password, *args[5:])
        else:
            return "no AUTH first"
        why = self.check(user.decode(errors="replace"), token.decode(errors="replace"))
        if why is None:
            self.signatures.add(dict(parse_qsl(token.decode().partition("/?")[2]))["X-Amz-Signature"])
        return why or rewritten

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if count:
                    self._count(len(data))
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()

    def _count(self, size: int) -> None:
        self._client_bytes += size
        trigger = self.advance_and_cut_after_bytes
        if trigger and self._client_bytes >= trigger[0]:
            self.advance_and_cut_after_bytes = None
            self.accepted_before_cut = self.accepted
            self.advance(trigger[1])
            self._close_all()
