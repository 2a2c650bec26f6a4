"""A storefront-like app that keeps writing to a Redis, as a separate process, for the sync and cutover tests.

    python tests/appwriter.py --url redis://:pw@127.0.0.1:6379/0 --out writes.jsonl [--rate 2000]
    python tests/appwriter.py --ssm-env test --password pw [--tls-ca ca.pem] --out writes.jsonl

It writes the storefront's own shapes (sessions, API cache, rate limits, locks), the types the sync must
carry (hashes, counters, lists, sorted sets, HyperLogLogs counted with PFCOUNT, streams read by consumer
groups with XREADGROUP and XACK), the
key-space churn it must follow (short TTLs, EXPIRE, PERSIST, DEL, RENAME), and *witness* writes: a unique
value SET on a key `<prefix>:w:<n>` that nothing else touches. Every reply is recorded, one JSON line per
command: `[ack_time, latency_ms, op, key, arg, status]` with status `ok`, `err` (the server refused it) or
`?` (the connection failed before the reply: it may or may not have been applied). A test then checks
that every acknowledged witness is on the target (`missing_witnesses`) and how long the app stalled
(`longest_stall`). The first line is a header (where it connected); SIGTERM or SIGINT ends the current
batch, writes a summary line and exits 0.

With --ssm-env it finds its Redis as the storefront does, at start-up only: the endpoint and port SSM
parameters (boto3; AWS_ENDPOINT_URL points it at moto). A cluster (or a serverless-like node) is detected
and driven through redis-py's cluster client. Commands go out in small pipelines to reach the rate on a
shared 2-core machine; each command still has its own reply and record.

The module doubles as the tests' helper library: `AppWriter` runs the process, `read_records`,
`missing_witnesses`, `longest_stall` and `latency` read what it recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

HERE = Path(__file__).resolve()
DEFAULT_PREFIX = "/storefront/{env}/redis"
FLUSH_EVERY_S = 0.2
MAX_CATCH_UP_S = 1.0  # after a stall, send at most this much backlog at once (an app's queue is bounded too)
STREAMS = 4
GROUPS = ("g1", "g2")

# op -> weight: how often the app does each thing (per command sent, roughly)
MIX = {
    "witness": 14, "session": 7, "api": 5, "tmp": 5, "s_set": 8, "s_expire": 5, "s_persist": 4, "s_del": 4,
    "rename": 4, "ratelimit": 5, "lock": 4, "unlock": 3, "hset": 7, "incr": 5, "rpush": 5, "zincrby": 5,
    "xadd": 6, "xreadgroup": 4, "xack": 4, "pfadd": 3, "pfcount": 2,
}


# --- the process: what it writes ---------------------------------------------------------------------

@dataclass
class Command:
    """One command to send, and how it is recorded."""

    op: str
    key: str
    arg: str
    args: tuple


@dataclass
class Workload:
    """Draws the next commands; keeps what later commands need (delivered stream ids to XACK)."""

    prefix: str
    keyspace: int = 1000
    witness_space: int = 0  # 0: every witness key is new; N: witness keys cycle over N keys
    seed: int = 0
    witness_only: bool = False
    counter: int = 0
    witness: int = 0
    unacked: dict = field(default_factory=dict)  # (stream, group) -> delivered ids not yet acked

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.ops = list(MIX)
        self.weights = [MIX[op] for op in self.ops]
        self.tag = f"{os.getpid()}"

    def key(self, family: str, space: int | None = None) -> str:
        return f"{self.prefix}:{family}:{self.rng.randrange(space or self.keyspace)}"

    def value(self) -> str:
        self.counter += 1
        return f"v{self.tag}.{self.counter}"

    def stream(self) -> str:
        return f"{self.prefix}:stream:{self.rng.randrange(STREAMS)}"

    def setup(self) -> list[Command]:
        """Consumer groups on the streams (MKSTREAM); BUSYGROUP when they exist is fine."""
        return [Command("xgroup", f"{self.prefix}:stream:{i}", group,
                        ("XGROUP", "CREATE", f"{self.prefix}:stream:{i}", group, "$", "MKSTREAM"))
                for i in range(STREAMS) for group in GROUPS]

    def next(self) -> list[Command]:
        op = "witness" if self.witness_only else self.rng.choices(self.ops, self.weights)[0]
        return getattr(self, f"_{op}")()

    def _witness(self) -> list[Command]:
        self.witness += 1
        n = self.witness if not self.witness_space else self.witness % self.witness_space
        key, value = f"{self.prefix}:w:{n}", self.value()
        return [Command("set", key, value, ("SET", key, value))]

    def _session(self) -> list[Command]:
        key, value = self.key("session"), self.value()
        return [Command("setex", key, value, ("SET", key, value, "EX", 3600))]

    def _api(self) -> list[Command]:
        key, value = self.key("api"), self.value()
        return [Command("setex", key, value, ("SET", key, value, "EX", 300))]

    def _tmp(self) -> list[Command]:
        key, value, ms = self.key("tmp"), self.value(), self.rng.randint(300, 3000)
        return [Command("setpx", key, f"{value}/{ms}", ("SET", key, value, "PX", ms))]

    def _s_set(self) -> list[Command]:
        key, value = self.key("s", 300), self.value()
        return [Command("set", key, value, ("SET", key, value))]

    def _s_expire(self) -> list[Command]:
        key, seconds = self.key("s", 300), self.rng.randint(1, 4)
        return [Command("expire", key, str(seconds), ("EXPIRE", key, seconds))]

    def _s_persist(self) -> list[Command]:
        key = self.key("s", 300)
        return [Command("persist", key, "", ("PERSIST", key))]

    def _s_del(self) -> list[Command]:
        key = self.key("s", 300)
        return [Command("del", key, "", ("DEL", key))]

    def _rename(self) -> list[Command]:
        """SET a key (sometimes with a TTL) and RENAME it over its partner: both names change."""
        pair = self.rng.randrange(self.keyspace // 4)
        source, target, value = f"{self.prefix}:{{rn{pair}}}:a", f"{self.prefix}:{{rn{pair}}}:b", self.value()
        if self.rng.random() < 0.5:
            source, target = target, source
        ttl = ("EX", 600) if self.rng.random() < 0.3 else ()
        return [Command("set", source, value, ("SET", source, value, *ttl)),
                Command("rename", source, target, ("RENAME", source, target))]

    def _ratelimit(self) -> list[Command]:
        key = self.key("ratelimit", 200)
        return [Command("incr", key, "", ("INCR", key)), Command("expire", key, "60", ("EXPIRE", key, 60))]

    def _lock(self) -> list[Command]:
        key, token = self.key("lock", 100), self.value()
        return [Command("setnx", key, token, ("SET", key, token, "NX", "EX", 30))]

    def _unlock(self) -> list[Command]:
        key = self.key("lock", 100)
        return [Command("del", key, "", ("DEL", key))]

    def _hset(self) -> list[Command]:
        key, name, value = self.key("h", 500), f"f{self.rng.randrange(20)}", self.value()
        return [Command("hset", key, f"{name}={value}", ("HSET", key, name, value))]

    def _incr(self) -> list[Command]:
        key = self.key("counter", 200)
        return [Command("incr", key, "", ("INCR", key))]

    def _rpush(self) -> list[Command]:
        key, value = self.key("list", 200), self.value()
        return [Command("rpush", key, value, ("RPUSH", key, value)),
                Command("ltrim", key, "-50", ("LTRIM", key, -50, -1))]

    def _zincrby(self) -> list[Command]:
        key, member = self.key("z", 200), f"m{self.rng.randrange(50)}"
        return [Command("zincrby", key, member, ("ZINCRBY", key, self.rng.randint(1, 5), member))]

    def _xadd(self) -> list[Command]:
        key, value = self.stream(), self.value()
        return [Command("xadd", key, value, ("XADD", key, "MAXLEN", 500, "*", "v", value))]

    def _pfadd(self) -> list[Command]:
        key, member = self.key("uniques", 50), f"u{self.rng.randrange(100_000)}"
        return [Command("pfadd", key, member, ("PFADD", key, member))]

    def _pfcount(self) -> list[Command]:
        """A read that rewrites the HyperLogLog's cached count (its bytes change, and no event says so)."""
        key = self.key("uniques", 50)
        return [Command("pfcount", key, "", ("PFCOUNT", key))]

    def _xreadgroup(self) -> list[Command]:
        key, group = self.stream(), self.rng.choice(GROUPS)
        consumer = f"c{self.rng.randrange(3)}"
        return [Command("xreadgroup", key, f"{group}/{consumer}",
                        ("XREADGROUP", "GROUP", group, consumer, "COUNT", 5, "STREAMS", key, ">"))]

    def _xack(self) -> list[Command]:
        """Ack most (not all) delivered entries, so pending lists stay non-empty and keep changing."""
        ready = [k for k, ids in self.unacked.items() if ids]
        if not ready:
            return self._xreadgroup()
        stream, group = self.rng.choice(ready)
        ids = self.unacked[(stream, group)]
        take = ids[:max(1, len(ids) * 3 // 4)]
        del ids[:len(take)]
        return [Command("xack", stream, f"{group}/{' '.join(take)}", ("XACK", stream, group, *take))]

    def delivered(self, command: Command, reply) -> None:
        """Remember what XREADGROUP delivered, for a later XACK."""
        if command.op != "xreadgroup" or not reply:
            return
        group = command.arg.split("/")[0]
        for _stream, entries in reply:
            ids = self.unacked.setdefault((command.key, group), [])
            ids.extend(_text(entry[0]) for entry in entries)
            del ids[:-200]  # bounded: the oldest stay pending forever, as a crashed consumer's would


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Recorder:
    """The JSONL record: flushed every FLUSH_EVERY_S and at the end, so a SIGTERM loses nothing."""

    path: Path
    acked: int = 0
    unknown: int = 0
    errors: int = 0
    longest_stall: float = 0.0
    stall_at: float = 0.0
    last_ack: float = 0.0
    latencies: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.file = open(self.path, "a", buffering=1 << 16)
        self.flushed = time.monotonic()

    def line(self, obj) -> None:
        self.file.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def batch(self, commands: list[Command], replies: list | None, sent: float, acked: float) -> None:
        latency = round((acked - sent) * 1000, 3)
        for index, command in enumerate(commands):
            if replies is None:
                status = "?"
                self.unknown += 1
            elif isinstance(replies[index], Exception):
                status = "err"
                self.errors += 1
            else:
                status = "ok"
                self.acked += 1
            self.line([round(acked, 6), latency if replies is not None else None, command.op, command.key,
                       command.arg, status])
        if replies is not None:
            if self.last_ack and acked - self.last_ack > self.longest_stall:
                self.longest_stall, self.stall_at = acked - self.last_ack, self.last_ack
            self.last_ack = acked
            self.latencies.append(latency)
        if time.monotonic() - self.flushed > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.file.flush()
        self.flushed = time.monotonic()

    def close(self, started: float) -> None:
        elapsed = max(time.time() - started, 1e-9)
        ordered = sorted(self.latencies)
        summary = {"acked": self.acked, "unknown": self.unknown, "errors": self.errors,
                   "seconds": round(elapsed, 3), "rate": round((self.acked + self.errors) / elapsed, 1),
                   "longest_stall_ms": round(self.longest_stall * 1000, 1), "stall_at": self.stall_at,
                   "batch_latency_ms": _percentiles(ordered)}
        self.line({"summary": summary})
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _percentiles(ordered: list[float]) -> dict:
    if not ordered:
        return {}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": ordered[-1]}


def ssm_endpoint(env: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, int, dict]:
    """Host and port from SSM, as the storefront reads them at start-up; and the versions read."""
    import boto3

    ssm = boto3.client("ssm")
    base = prefix.replace("{env}", env).rstrip("/")
    endpoint = ssm.get_parameter(Name=f"{base}/endpoint")["Parameter"]
    port = ssm.get_parameter(Name=f"{base}/port")["Parameter"]
    return endpoint["Value"], int(port["Value"]), {"endpoint": endpoint["Version"], "port": port["Version"]}


def connect(host: str, port: int, *, password: str | None, tls_ca: str | None, db: int = 0,
            username: str | None = None, timeout: float = 10.0):
    """A client as an app would hold one: the cluster client when the server is in cluster mode."""
    kwargs = {"host": host, "port": port, "password": password, "username": username, "socket_timeout": timeout,
              "socket_connect_timeout": 5, "client_name": "appwriter"}
    if tls_ca:
        kwargs.update(ssl=True, ssl_ca_certs=tls_ca, ssl_check_hostname=False)
    probe = redis.Redis(db=db, **kwargs)
    if probe.info("cluster").get("cluster_enabled"):
        probe.close()
        return redis.RedisCluster(**kwargs), True
    return probe, False


def url_parts(url: str) -> dict:
    from redis.connection import parse_url

    parts = parse_url(url)
    return {"host": parts.get("host", "127.0.0.1"), "port": int(parts.get("port", 6379)),
            "password": parts.get("password"), "username": parts.get("username"), "db": int(parts.get("db", 0)),
            "tls_ca": parts.get("ssl_ca_certs") if url.startswith("rediss://") else None}


class Stop:
    """SIGTERM/SIGINT: finish the batch in flight, then stop."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)

    def request(self, *_) -> None:
        self.requested = True


def send(client, commands: list[Command]) -> list:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command.args)
    return pipe.execute(raise_on_error=False)


def run(args: argparse.Namespace) -> int:
    stop = Stop()
    if args.ssm_env:
        host, port, versions = ssm_endpoint(args.ssm_env, args.param_prefix)
        target = {"host": host, "port": port, "password": args.password or os.environ.get("APPWRITER_PASSWORD"),
                  "username": None, "db": 0, "tls_ca": args.tls_ca}
    else:
        target, versions = url_parts(args.url), None
    client, cluster = connect(target["host"], target["port"], password=target["password"], tls_ca=target["tls_ca"],
                              db=target["db"], username=target["username"], timeout=args.socket_timeout)
    recorder = Recorder(Path(args.out))
    started = time.time()
    recorder.line({"start": started, "pid": os.getpid(), "endpoint": f"{target['host']}:{target['port']}",
                   "cluster": cluster, "ssm_versions": versions, "prefix": args.prefix, "rate": args.rate})
    workload = Workload(args.prefix, keyspace=args.keyspace, witness_space=args.witness_space, seed=args.seed,
                        witness_only=args.witness_only)
    if not args.witness_only:
        _send_batch(client, workload.setup(), workload, recorder)
    recorder.flush()
    batch = args.batch or max(1, args.rate // 200)
    deadline = time.monotonic() + args.duration if args.duration else None
    due = time.monotonic()
    while not stop.requested and (deadline is None or time.monotonic() < deadline):
        now = time.monotonic()
        if now < due:
            time.sleep(min(due - now, 0.05))
            continue
        commands: list[Command] = []
        while len(commands) < batch:
            commands += workload.next()
        _send_batch(client, commands, workload, recorder)
        due = max(due + len(commands) / args.rate, time.monotonic() - MAX_CATCH_UP_S)
    recorder.close(started)
    return 0


def _send_batch(client, commands: list[Command], workload: Workload, recorder: Recorder) -> None:
    sent = time.time()
    try:
        replies = send(client, commands)
    except (redis.ConnectionError, redis.TimeoutError, redis.ClusterError, OSError) as exc:
        recorder.batch(commands, None, sent, time.time())
        recorder.line({"error": f"{type(exc).__name__}: {exc}"[:300], "at": time.time()})
        time.sleep(0.1)  # redis-py reconnects on the next command
        return
    acked = time.time()
    recorder.batch(commands, replies, sent, acked)
    for command, reply in zip(commands, replies):
        if not isinstance(reply, Exception):
            workload.delivered(command, reply)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="redis:// or rediss://...?ssl_ca_certs=FILE, password in the URL")
    where.add_argument("--ssm-env", help="read <prefix>/endpoint and /port from SSM at start, as the storefront does")
    parser.add_argument("--param-prefix", default=DEFAULT_PREFIX, help="SSM prefix, {env} substituted")
    parser.add_argument("--password", help="with --ssm-env (or APPWRITER_PASSWORD)")
    parser.add_argument("--tls-ca", help="with --ssm-env: connect with TLS, trusting this CA")
    parser.add_argument("--out", required=True, help="the JSONL record of every reply")
    parser.add_argument("--rate", type=int, default=2000, help="commands per second")
    parser.add_argument("--batch", type=int, default=0, help="commands per pipeline (default rate/200)")
    parser.add_argument("--prefix", default="app", help="key prefix (two apps: the same or different)")
    parser.add_argument("--keyspace", type=int, default=1000, help="keys per family (fewer: more coalescing)")
    parser.add_argument("--witness-space", type=int, default=0, help="0: unique witness keys; N: cycle over N")
    parser.add_argument("--witness-only", action="store_true", help="only witness SETs (an end-to-end lag probe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until SIGTERM")
    parser.add_argument("--socket-timeout", type=float, default=10.0, help="longer than any write fence")
    return parser.parse_args(argv)


# --- the tests' side: run it, read what it recorded ----------------------------------------------------

@dataclass
class Records:
    header: dict
    ops: list[list]  # [ack_time, latency_ms, op, key, arg, status]
    summary: dict | None
    errors: list[dict] = field(default_factory=list)

    def acked(self) -> list[list]:
        return [op for op in self.ops if op[5] == "ok"]

    def witnesses(self) -> list[list]:
        return [op for op in self.ops if op[2] == "set" and ":w:" in op[3] and op[5] != "err"]


def read_records(path: Path) -> Records:
    header, ops, summary, errors = {}, [], None, []
    with open(path) as file:
        for line in file:
            if not line.endswith("\n"):
                break  # a torn last line (kill -9): ignore it
            item = json.loads(line)
            if isinstance(item, list):
                ops.append(item)
            elif "start" in item:
                header = item
            elif "summary" in item:
                summary = item["summary"]
            else:
                errors.append(item)
    return Records(header, ops, summary, errors)


def expected_witnesses(*records: Records) -> dict[str, set[str]]:
    """Witness key -> the values it may hold: the last acknowledged one, or any later write whose reply was
    lost (it may have landed). Several apps' records merge by ack time."""
    ordered = sorted((op for r in records for op in r.witnesses()), key=lambda op: op[0])
    expected: dict[str, set[str]] = {}
    for _, _, _, key, value, status in ordered:
        if status == "ok":
            expected[key] = {value}
        elif key in expected:
            expected[key].add(value)
    return expected


def read_strings(server, keys: list[str]) -> dict[str, bytes | None]:
    """GET every key on whichever master owns it (a testbed server/cluster, or a plain client)."""
    from snapshot import masters

    clients = masters(server) if hasattr(server, "nodes") or hasattr(server, "port") else [server]
    found: dict[str, bytes | None] = dict.fromkeys(keys)
    for client in clients:
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.get(key)
            for key, reply in zip(chunk, pipe.execute(raise_on_error=False)):
                if reply is not None and not isinstance(reply, Exception):
                    found[key] = reply
    return found


def missing_witnesses(records: Records | list[Records], server) -> list[str]:
    """Acknowledged witness writes whose value is not on `server`: each is a lost write."""
    records = records if isinstance(records, list) else [records]
    expected = expected_witnesses(*records)
    values = read_strings(server, sorted(expected))
    return sorted(key for key, ok in expected.items() if values[key] is None or values[key].decode() not in ok)


def longest_stall(records: Records, since: float | None = None, until: float | None = None) -> tuple[float, float]:
    """(seconds, at): the longest time between two acknowledged batches within [since, until]."""
    times = sorted({op[0] for op in records.ops if op[5] != "?"
                    and (since is None or op[0] >= since) and (until is None or op[0] <= until)})
    best, at = 0.0, times[0] if times else 0.0
    for before, after in zip(times, times[1:]):
        if after - before > best:
            best, at = after - before, before
    return best, at


def latency(records: Records) -> dict:
    """p50/p99/max of the commands' round trips (ms), from the acknowledged ones."""
    return _percentiles(sorted(op[1] for op in records.ops if op[1] is not None))


class AppWriter:
    """tests/appwriter.py as a child process (dies with its parent), started and stopped by a test."""

    def __init__(self, out: Path, *, url: str | None = None, ssm_env: str | None = None, password: str | None = None,
                 tls_ca: str | None = None, rate: int = 2000, prefix: str = "app", env: dict | None = None,
                 extra: tuple = ()) -> None:
        self.out = Path(out)
        where = ["--url", url] if url else ["--ssm-env", ssm_env]
        self.args = [sys.executable, str(HERE), *where, "--out", str(self.out), "--rate", str(rate),
                     "--prefix", prefix, *(["--tls-ca", str(tls_ca)] if tls_ca else []), *map(str, extra)]
        self.env = {**os.environ, **(env or {})}
        if password:
            self.env["APPWRITER_PASSWORD"] = password
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> AppWriter:
        """Start, and return once its first writes are acknowledged."""
        from migrate.children import die_with_parent

        self.process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, preexec_fn=die_with_parent)
        self.wait_acks(1, timeout)
        return self

    def lines(self) -> int:
        try:
            with open(self.out, "rb") as file:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    def wait_acks(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` more lines than the header are recorded (flushed every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while self.lines() < count + 1:
            if self.process.poll() is not None:
                raise RuntimeError(f"appwriter exited {self.process.returncode}: {self.process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"appwriter recorded fewer than {count} writes in {timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> Records:
        """SIGTERM; it must exit 0 with a summary."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        if code != 0:
            raise RuntimeError(f"appwriter exited {code}: {self.process.stderr.read()[-2000:]}")
        return read_records(self.out)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> AppWriter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


if __name__ == "__main__":
    sys.exit(run(parse_args()))
