"""Connections and topology discovery for source and target Redis.

Cluster or standalone is detected, never asked for. Every socket has a timeout, and every
connection failure becomes a `BadInput` that says what to check, with the password redacted.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from ..errors import AuthenticationFailed, BadInput, MigrateError, Unreachable
from ..redact import redact_url, register_secret, scrub
from . import engines
from .iam import IamAuth, IamCache, IamCredentialProvider
from .keyspace import SLOT_COUNT, SlotRanges, key_slot
from .rdb import rdb_version_of

PROBE_KEY = b"__redis_migrate_probe__"


@dataclass(frozen=True)
class Endpoint:
    """One side of the migration: a redis-py URL plus how to reach it safely."""

    role: str
    url: str
    tls_insecure: bool = False
    socket_timeout: float = 60.0
    connect_timeout: float = 10.0
    password: str | None = field(default=None, repr=False, compare=False)
    iam: IamAuth | None = None  # IAM authentication: a token signed per connection instead of the password
    client_name: str | None = None  # CLIENT SETNAME on every connection (sync: cutover tells ours from the apps')

    @classmethod
    def from_url(cls, role: str, url: str, *, tls_insecure: bool = False, iam: IamCache | None = None,
                 **kwargs) -> Endpoint:
        """Validate the URL early, and take the password from the environment when it is set there
        (or, with IAM, the user name from the URL: tokens are signed per connection)."""
        if not url or _scheme(url) not in ("redis", "rediss", "unix"):
            raise BadInput(
                f"{role} URL {redact_url(url or '')!r} is not a Redis URL",
                "use redis://[user:password@]host:port/db, or rediss://host:port?ssl_ca_certs=FILE for TLS",
            )
        try:
            parsed = parse_url(url)
        except ValueError as exc:
            raise BadInput(f"{role} URL {redact_url(url)!r} cannot be parsed: {exc}",
                           "check the port number and the query arguments") from None
        password = os.environ.get(f"REDIS_MIGRATE_{role.upper()}_PASSWORD") or parsed.get("password")
        register_secret(password)
        if iam is not None:
            kwargs["iam"] = _iam_auth(role, url, parsed, password, iam)
            password = None
        for name, field_name in (("socket_timeout", "socket_timeout"), ("socket_connect_timeout", "connect_timeout")):
            if parsed.get(name):  # the URL may bound the timeouts itself, as redis-py's URLs do
                kwargs.setdefault(field_name, float(parsed[name]))
        return cls(role=role, url=url, tls_insecure=tls_insecure, password=password, **kwargs)

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def db(self) -> int:
        return int(parse_url(self.url).get("db", 0) or 0)

    @property
    def identity(self) -> str:
        """What ties a run directory to this endpoint: scheme, host, port and db, never a secret."""
        parsed = parse_url(self.url)
        return f"{urlsplit(self.url).scheme}://{parsed.get('host')}:{parsed.get('port')}/{self.db}"

    def connection_kwargs(self, db: int | None = None) -> dict:
        """Keyword arguments for `redis.Redis`, with timeouts, TLS verification and the password (or, with
        IAM, a credential provider that signs a token per connection)."""
        kwargs = parse_url(self.url)
        kwargs.pop("connection_class", None)
        kwargs["password"] = self.password
        if self.iam is not None:
            kwargs.pop("username", None)
            kwargs.pop("password", None)
            kwargs["credential_provider"] = IamCredentialProvider(self.iam)
        kwargs["db"] = self.db if db is None else db
        kwargs["socket_timeout"] = self.socket_timeout
        kwargs["socket_connect_timeout"] = self.connect_timeout
        kwargs["retry"] = Retry(NoBackoff(), 0)  # fail fast: the stages retry what is worth retrying
        if self.client_name:
            kwargs["client_name"] = self.client_name
        if self.tls:
            kwargs["ssl"] = True
            if self.tls_insecure:
                kwargs["ssl_cert_reqs"] = "none"
                kwargs["ssl_check_hostname"] = False
            else:
                kwargs.setdefault("ssl_check_hostname", True)
        return kwargs

    def credentials(self) -> tuple[str | None, str] | None:
        """(user, password) for one new connection's AUTH, None when the server wants none. With IAM a
        token signed now: a connection opened later signs its own."""
        if self.iam is not None:
            return self.iam.credentials()
        if not self.password:
            return None
        return parse_url(self.url).get("username"), self.password

    def node_client(self, host: str | None = None, port: int | None = None, db: int | None = None) -> redis.Redis:
        """A client for one node (the URL's own, or a cluster member), with the same auth and TLS.

        These clients only discover, probe, count and sample: small, quick calls. redis-py runs the
        TLS handshake under socket_timeout, so a TLS client talking to a plain port that never answers
        would wait a long time: every call here is bounded by the connect timeout instead."""
        kwargs = self.connection_kwargs(db)
        if host is not None:
            kwargs["host"], kwargs["port"] = host, port
        kwargs["socket_timeout"] = self.connect_timeout
        return redis.Redis(**kwargs)


def _iam_auth(role: str, url: str, parsed: dict, password: str | None, cache: IamCache) -> IamAuth:
    """The IAM login of an endpoint: the user must be in the URL, and no password may compete with the tokens."""
    user = parsed.get("username")
    if not user:
        raise BadInput(f"--{role}-iam needs the ElastiCache user name in the {role} URL ({redact_url(url)!r})",
                       "put the IAM-enabled user in the URL: rediss://USER@host:6379 (the user's name equals its id)")
    if password:
        raise BadInput(f"--{role}-iam signs a token for every connection, but a {role} password was given too",
                       f"drop the password from the URL and unset REDIS_MIGRATE_{role.upper()}_PASSWORD")
    return IamAuth(cache, user)


def _scheme(url: str) -> str | None:
    try:
        return urlsplit(url).scheme
    except ValueError:  # e.g. an unclosed [IPv6] host
        return None


@dataclass(frozen=True)
class Node:
    host: str
    port: int
    slots: tuple[tuple[int, int], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Topology:
    """What discovery found: the masters to read from or write to, and what the server is."""

    endpoint: Endpoint
    kind: str  # "standalone" or "cluster"
    server: str  # "redis" or "valkey"
    version: str
    masters: list[Node]

    @property
    def is_cluster(self) -> bool:
        return self.kind == "cluster"

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return engines.version_tuple(self.version)

    @property
    def has_pexpiretime(self) -> bool:
        """PEXPIRETIME (Redis 7+) answers the absolute expiry itself; before it, PTTL only what is left."""
        return self.version_tuple >= (7, 0)

    def key_count(self, db: int | None = None) -> int:
        """DBSIZE summed over the masters (not atomic on a cluster: a progress and preflight figure)."""
        with translated_errors(self.endpoint):
            return sum(self.client(node, db).dbsize() for node in self.masters)

    def keys_in(self, slots: SlotRanges) -> int:
        """How many keys of these slots the masters hold: their names SCANned (no values), counted by slot."""
        count = 0
        with translated_errors(self.endpoint):
            for node in self.masters:
                if self.is_cluster and not slots.intersects(node.slots):
                    continue  # none of these slots there: not read at all, as the dump does
                client, cursor = self.client(node), 0
                while True:
                    cursor, keys = client.scan(cursor, count=5000)
                    count += len(slots.keep(keys))
                    if not cursor:
                        break
        return count

    def other_databases(self, db: int) -> tuple[dict[int, int], list[str]]:
        """Keys per database other than `db` (INFO keyspace: a cluster shows only db0, but on Valkey 9), and the
        masters where INFO keyspace is unavailable, so that nothing goes unchecked silently."""
        found: dict[int, int] = {}
        unavailable = []
        for node in self.masters:
            try:
                with translated_errors(self.endpoint):
                    keyspace = self.client(node).info("keyspace")
            except redis.ResponseError:
                unavailable.append(node.name)
                continue
            for name, stats in keyspace.items():
                number = int(name[2:]) if name.startswith("db") and name[2:].isdigit() else None
                if number is not None and number != db and stats.get("keys"):
                    found[number] = found.get(number, 0) + int(stats["keys"])
        return dict(sorted(found.items())), unavailable

    def client(self, node: Node, db: int | None = None) -> redis.Redis:
        return self.endpoint.node_client(node.host, node.port, db)

    def slot_owners(self) -> list[int]:
        """For every slot, the index of the master that owns it (-1 where no master does)."""
        owners = [-1] * SLOT_COUNT
        for index, node in enumerate(self.masters):
            for start, end in node.slots:
                owners[start:end + 1] = [index] * (end - start + 1)
        return owners

    # --- what the engine and version say the server can hold (net/engines.py) ---

    @property
    def engine(self) -> str:
        """"Redis" or "Valkey", as an operator names it."""
        return engines.display_name(self.server)

    @property
    def expected_rdb_version(self) -> int | None:
        """The RDB version this engine's release writes (a DUMP tells for sure: `probe_rdb_version`)."""
        return engines.expected_rdb_version(self.server, self.version)

    @property
    def has_hash_field_ttl(self) -> bool:
        return engines.has_hash_field_ttl(self.server, self.version)

    @property
    def has_stream_counters(self) -> bool:
        return engines.has_stream_counters(self.server, self.version)

    @property
    def has_cluster_databases(self) -> bool:
        """A cluster whose nodes may hold keys outside db 0 (Valkey 9): its other databases are checked too."""
        return self.is_cluster and engines.has_cluster_databases(self.server, self.version)

    def describe(self) -> dict:
        return {
            "url": self.endpoint.redacted,
            "kind": self.kind,
            "server": self.server,
            "engine": self.engine,
            "version": self.version,
            "tls": self.endpoint.tls,
            "auth": bool(self.endpoint.password or self.endpoint.iam),
            "iam": self.endpoint.iam.describe() if self.endpoint.iam else None,
            "masters": [n.name for n in self.masters],
        }


# What servers answer to a refused login, on AUTH or on the first command of a connection without AUTH.
AUTH_REFUSALS = ("WRONGPASS", "NOAUTH", "invalid username-password pair", "invalid password",
                 "no password is set", "without any password configured")


def is_auth_refusal(text: str) -> bool:
    return any(marker.lower() in text.lower() for marker in AUTH_REFUSALS)


def authentication_failed(endpoint: Endpoint, reply: str) -> AuthenticationFailed:
    """The one error for a refused login, wherever a connection is opened (start, reconnect, worker)."""
    if endpoint.iam is not None:
        iam = endpoint.iam
        return AuthenticationFailed(
            f"{endpoint.role} {endpoint.redacted}: IAM authentication failed for user {iam.user!r} on "
            f"{iam.cache.kind} {iam.cache.name!r} ({_first_line(reply)})",
            f"check that the ElastiCache user {iam.user!r} exists with authentication mode IAM (its name equal to its "
            f"id), that it is in the cache's user group, and that the AWS identity's IAM policy allows "
            f"elasticache:Connect on the cache's ARN and the user's ARN; that --{endpoint.role}-iam names the cache "
            f"(not its DNS name) with the right --{endpoint.role}-iam-type, and that the AWS region and "
            f"credentials are the cache's")
    return AuthenticationFailed(
        f"{endpoint.role} {endpoint.redacted}: authentication failed ({_first_line(reply)})",
        f"check the password (or IAM token) and user in the URL or REDIS_MIGRATE_{endpoint.role.upper()}_PASSWORD: "
        "a password rotated or a token expired since the run started needs the new one; rerun to resume")


def not_redis(endpoint: Endpoint, detail: str) -> BadInput:
    return BadInput(f"{endpoint.role} {endpoint.redacted} does not speak the Redis protocol: is this the right "
                    f"port? ({_first_line(detail)[:120]})",
                    "point the URL at the Redis port (6379 for ElastiCache), not at a web or other service")


def no_such_database(endpoint: Endpoint, db: int, host: str | None = None, port: int | None = None) -> BadInput:
    """SELECT refused: say how many databases the server has, when it lets us ask (CONFIG GET databases)."""
    count = database_count(endpoint, host, port)
    has = f" (it has {count} databases: 0 to {count - 1})" if count else ""
    return BadInput(f"{endpoint.role} {endpoint.redacted}: db {db} does not exist on that server{has}",
                    f"pick an existing database with --db or the URL's /N{f' (0-{count - 1})' if count else ''}; "
                    "a cluster (but a Valkey 9 one with cluster-databases) and ElastiCache Serverless have only db 0")


def database_count(endpoint: Endpoint, host: str | None = None, port: int | None = None) -> int | None:
    """The server's `databases` setting (`cluster-databases` on a Valkey 9 cluster node), or None where CONFIG
    is refused (ElastiCache) or the call fails."""
    try:
        client = endpoint.node_client(host, port, db=0)
        setting = "cluster-databases" if client.info("cluster").get("cluster_enabled") else "databases"
        return int(client.config_get(setting)[setting])
    except (redis.RedisError, KeyError, ValueError, OSError):
        return None


@contextlib.contextmanager
def translated_errors(endpoint: Endpoint) -> Iterator[None]:
    """Turn redis-py and socket failures into errors that name the endpoint and the fix."""
    where = f"{endpoint.role} {endpoint.redacted}"
    try:
        yield
    except MigrateError:
        raise
    except redis.AuthenticationError as exc:
        raise authentication_failed(endpoint, str(exc) or "wrong password or user") from None
    except redis.exceptions.NoPermissionError as exc:  # redis-py strips the NOPERM prefix
        raise BadInput(f"{where}: not authorised ({_first_line(str(exc))})",
                       "use a user allowed to run SCAN, TYPE, DUMP, PEXPIRETIME, EVAL on the source, or RESTORE "
                       "and the write commands on the target") from None
    except (redis.exceptions.InvalidResponse, hiredis.ProtocolError) as exc:
        raise not_redis(endpoint, str(exc)) from None
    except redis.ResponseError as exc:
        text = str(exc)
        if is_auth_refusal(text):
            raise authentication_failed(endpoint, text) from None
        if "NOPERM" in text:
            raise BadInput(f"{where}: not authorised ({_first_line(text)})",
                           "give a user allowed to run the scan/dump/restore commands") from None
        if "DB index is out of range" in text or "SELECT is not allowed in cluster mode" in text:
            raise no_such_database(endpoint, endpoint.db) from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, ssl.SSLError, OSError) as exc:
        raise Unreachable(f"{where}: cannot connect ({_first_line(str(exc))})",
                          _connection_hint(endpoint, str(exc))) from None


def _first_line(text: str) -> str:
    return scrub(text.strip().splitlines()[0] if text.strip() else type(text).__name__)


def _connection_hint(endpoint: Endpoint, text: str) -> str:
    lowered = text.lower()
    if "certificate" in lowered or "verify" in lowered:
        return ("the server's TLS certificate is not trusted: pass its CA with ?ssl_ca_certs=FILE in the URL, "
                "or --tls-insecure to skip verification (not for production)")
    if "ssl" in lowered or "wrong version" in lowered or "record layer" in lowered:
        return "TLS mismatch: use rediss:// only for a TLS port, and redis:// for a plain one"
    if endpoint.tls:
        return ("check host and port, and that the port speaks TLS (ElastiCache Serverless does, on 6379); "
                "for a plain port use redis://")
    return ("check host, port and network path (security groups); if the server requires TLS, "
            "as ElastiCache Serverless does, use rediss://")


def discover(endpoint: Endpoint) -> Topology:
    """Connect, authenticate and find the masters. Refuses standalone replicas and clusters with uncovered
    slots. A cluster node that is a replica is fine: its slot map names every master (an ElastiCache
    configuration endpoint may resolve to any node). Discovery reads db 0; the stages check their own db."""
    client = endpoint.node_client(db=0)
    with translated_errors(endpoint):
        client.ping()
        server, version, mode, role = _hello(client)
        if role not in ("master", "primary") and mode != "cluster":
            raise BadInput(f"{endpoint.role} {endpoint.redacted} is a replica (role {role})",
                           "point at the primary endpoint: a replica cannot be the target, and scanning "
                           "one can miss recent writes")
        if mode != "cluster":
            connection = client.connection_pool.connection_kwargs
            host, port = connection["host"], connection["port"]
            return Topology(endpoint, "standalone", server, version, [Node(host, int(port), ((0, SLOT_COUNT - 1),))])
        masters = _cluster_masters(client, endpoint)
    topology = Topology(endpoint, "cluster", server, version, masters)
    uncovered = topology.slot_owners().count(-1)
    if uncovered:
        raise BadInput(f"{endpoint.role} cluster {endpoint.redacted} leaves {uncovered} of {SLOT_COUNT} slots "
                       "uncovered",
                       "wait for the cluster to be healthy (CLUSTER INFO cluster_state:ok) and run again")
    return topology


def _hello(client: redis.Redis) -> tuple[str, str, str, str]:
    """Server name, version, mode and role. HELLO exists from Redis 6; INFO is the fallback."""
    try:
        reply = client.execute_command("HELLO", 2)
        fields = {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
        return (_text(fields.get("server", "redis")), _text(fields.get("version", "0")),
                _text(fields.get("mode", "standalone")), _text(fields.get("role", "master")))
    except redis.ResponseError:
        info = client.info("server")
        replication = client.info("replication")
        server, version = engines.engine_from_info(info)
        mode = info.get("server_mode") or info.get("redis_mode", "standalone")
        return server, version, str(mode), str(replication.get("role", "master"))


def _cluster_masters(client: redis.Redis, endpoint: Endpoint) -> list[Node]:
    """Masters and their slot ranges from CLUSTER SLOTS. An empty host means 'the one you asked'."""
    default_host = client.connection_pool.connection_kwargs["host"]
    ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for entry in client.execute_command("CLUSTER SLOTS"):
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = _text(master[0]) or default_host
        if host == "?":
            host = default_host
        ranges.setdefault((host, int(master[1])), []).append((start, end))
    return [Node(host, port, tuple(sorted(slots))) for (host, port), slots in sorted(ranges.items())]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_rdb_version(topology: Topology) -> int:
    """The RDB version the target writes: DUMP a scratch key in its first master, then delete it."""
    client = topology.client(topology.masters[0])
    key = _probe_key_for(topology.masters[0])
    with translated_errors(topology.endpoint):
        client.set(key, b"probe", px=60_000)
        try:
            payload = client.dump(key)
        finally:
            client.delete(key)
    return rdb_version_of(payload)


def _probe_key_for(node: Node) -> bytes:
    """A scratch key whose slot this node owns, so a cluster node never answers MOVED."""
    owned = node.slots or ((0, SLOT_COUNT - 1),)
    for suffix in range(100_000):
        key = PROBE_KEY + str(suffix).encode()
        slot = key_slot(key)
        if any(start <= slot <= end for start, end in owned):
            return key
    raise MigrateError("no probe key found for node " + node.name)
