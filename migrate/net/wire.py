"""A lean RESP connection for the hot paths (dump, replay): hand-packed commands, hiredis parsing.

redis-py's pipelines spend most of a bulk copy's time in per-command Python (routing, callbacks).
Here a batch is one `sendall` of pre-packed bytes and a tight `hiredis.Reader.gets()` loop. Error
replies come back as values (`hiredis.ReplyError`), so the caller decides per key what they mean.
"""

from __future__ import annotations

import socket
import ssl
import time
from itertools import islice

import hiredis
import redis

from .endpoints import Endpoint, authentication_failed, is_auth_refusal, no_such_database, translated_errors
from .iam import renew_after_seconds

ReplyError = hiredis.ReplyError
_MORE = object()  # what the reader answers when it needs more bytes: equal to no reply (False == 0, not _MORE)
_RECV = 1 << 20
_OK = b"+OK\r\n"


def pack(*args: bytes) -> bytes:
    """One command in RESP, packed by hiredis (in C: no Python step per argument). Arguments must be bytes."""
    return _pack_command(args)


_pack_command = hiredis.pack_command


def pack_restore(key: bytes, expire_at: int, payload: bytes) -> bytes:
    """RESTORE key <abs-ms> payload REPLACE ABSTTL, packed in one step (the replay hot path)."""
    ttl = b"0" if expire_at < 0 else b"%d" % expire_at
    return b"*6\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$7\r\nREPLACE\r\n$6\r\nABSTTL\r\n" % (
        len(key), key, len(ttl), ttl, len(payload), payload)


class Renewing(ConnectionError):
    """An IAM connection closed on purpose before ElastiCache's 12-hour limit: the caller reconnects (a new
    token) and resends what was in flight, as after any dropped connection."""


class Wire:
    """One connection to one node, authenticated, in the right db, with socket timeouts.

    ElastiCache closes an IAM connection after 12 hours. A caller that knows when nothing is in flight
    closes a connection that is `renew_due` there and opens a new one (replay, between segments). `renew`
    is for a caller that always has a request in flight but reconnects and resends after a dropped
    connection (the dump): an IAM connection older than `iam.renew_after_seconds()` is closed at its next
    send (`Renewing`), rather than left for the server to cut, possibly mid-reply."""

    def __init__(self, endpoint: Endpoint, host: str, port: int, db: int = 0, *, renew: bool = False) -> None:
        self.endpoint = endpoint
        self.address = (host, port)
        self.db = db
        self.renew = renew and endpoint.iam is not None
        self.connected_at = 0.0
        self.sock: socket.socket | None = None
        self.reader = hiredis.Reader(notEnoughData=_MORE)
        self._unparsed = b""
        with translated_errors(endpoint):
            self._connect()

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def _connect(self) -> None:
        sock = socket.create_connection(self.address, timeout=self.endpoint.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.endpoint.tls:
            sock = _tls_context(self.endpoint).wrap_socket(sock, server_hostname=self.address[0])
        sock.settimeout(self.endpoint.socket_timeout)
        self.sock = sock
        self.connected_at = time.monotonic()
        self.reader = hiredis.Reader(notEnoughData=_MORE)
        self._unparsed = b""  # bytes received by read_ok and not yet given to the reader
        self._handshake()

    def _handshake(self) -> None:
        """AUTH and SELECT in one round trip (PING when neither is needed, so that a server that wants a
        password says so here). A refused login is `AuthenticationFailed` on every (re)connect: the
        retry loops give up at once instead of retrying a credential that time cannot fix."""
        credentials = self.endpoint.credentials()  # with IAM: a token signed for this connection only
        commands = []
        if credentials:
            user, password = credentials
            commands.append((b"AUTH", user.encode(), password.encode()) if user else (b"AUTH", password.encode()))
        if self.db:
            commands.append((b"SELECT", b"%d" % self.db))
        commands = commands or [(b"PING",)]
        if self.endpoint.client_name:
            commands.append((b"CLIENT", b"SETNAME", self.endpoint.client_name.encode()))
        self.send(b"".join(pack(*command) for command in commands))
        for command, reply in zip(commands, self.read(len(commands))):
            if not isinstance(reply, ReplyError) or command[0] == b"CLIENT":  # a refused name is only cosmetic
                continue
            if command[0] == b"AUTH" or is_auth_refusal(str(reply)):
                raise authentication_failed(self.endpoint, str(reply))
            if command[0] == b"SELECT":
                raise no_such_database(self.endpoint, self.db, *self.address)
            raise redis.ResponseError(str(reply))

    @property
    def renew_due(self) -> bool:
        """An IAM connection old enough to be replaced before the server's 12-hour limit."""
        return self.endpoint.iam is not None and time.monotonic() - self.connected_at > renew_after_seconds()

    def send(self, data: bytes) -> None:
        if self.renew and self.renew_due:
            self.close()
            raise Renewing(f"{self.name}: renewing the IAM connection before the 12-hour limit")
        self.sock.sendall(data)

    def read_ok(self, count: int) -> list | bool:
        """True if the next `count` replies are all +OK, checked on the raw bytes (the replay hot path);
        otherwise the replies themselves, like `read`. Only for commands whose replies are never shorter
        than +OK, such as RESTORE."""
        if self.reader.has_data():
            return self.read(count)
        need = len(_OK) * count
        parts, size = [self._unparsed], len(self._unparsed)
        while size < need:
            data = self.sock.recv(_RECV)
            if not data:
                raise ConnectionError(f"{self.name} closed the connection")
            parts.append(data)
            size += len(data)
        data = b"".join(parts)
        if data.startswith(_OK) and data[:need] == _OK * count:
            self._unparsed = data[need:]
            return True
        self._unparsed = data
        return self.read(count)

    def read(self, count: int) -> list:
        """`count` replies, in order. Error replies are returned, not raised."""
        if self._unparsed:
            self.reader.feed(self._unparsed)
            self._unparsed = b""
        replies: list = []
        parsed = iter(self.reader.gets, _MORE)
        while True:
            replies.extend(islice(parsed, count - len(replies)))  # every complete reply, in C (no Python step each)
            if len(replies) >= count:
                return replies
            data = self.sock.recv(_RECV)
            if not data:
                raise ConnectionError(f"{self.name} closed the connection")
            self.reader.feed(data)
            parsed = iter(self.reader.gets, _MORE)

    def call(self, *args: bytes, check: bool = True):
        self.send(pack(*args))
        reply = self.read(1)[0]
        if check and isinstance(reply, ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def _tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The same TLS settings redis-py would use for this URL: verified unless --tls-insecure."""
    kwargs = endpoint.connection_kwargs()
    context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"), capath=kwargs.get("ssl_ca_path"))
    context.check_hostname = bool(kwargs.get("ssl_check_hostname")) and not endpoint.tls_insecure
    if endpoint.tls_insecure or kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
    return context
