"""retire-check: GO or NO-GO for removing the old Redis, with the evidence. It deletes nothing.

The old Redis is unused when: SSM has pointed away from it for the soak period (from the parameter's
history), nobody but this tool connects to it or writes to it during a watch window, no sync runs on the
run dir, and the archive (when given) is whole in S3. Writes are counted from INFO commandstats, per
command flagged `write` by COMMAND: keys that expire are not writes, and this tool's own commands
(CLIENT LIST, INFO) are reads. Connections named `redis-migrate...` are this toolkit's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import botocore.exceptions as bex
import redis
from redis.connection import parse_url

from ..errors import BadInput
from ..net.endpoints import Endpoint, discover, translated_errors
from ..rundir import RunDir
from ..sync.protocol import SyncLedger
from .archive import ArchiveSegments
from .aws import Clients, aws_errors, error_code
from .cutover import format_duration, parameter_names

OWN_NAME = "redis-migrate-retire-check"
OWN_PREFIX = "redis-migrate"
SAMPLE_SECONDS = 0.5
# Used only where COMMAND is refused: the usual write commands.
FALLBACK_WRITES = frozenset(
    "set setex psetex setnx mset msetnx append incr incrby incrbyfloat decr decrby getset getdel getex setrange del "
    "unlink expire pexpire expireat pexpireat persist rename renamenx hset hsetnx hmset hdel hincrby hincrbyfloat "
    "lpush rpush lpushx rpushx lpop rpop lset lrem ltrim linsert lmove blmove rpoplpush sadd srem spop smove "
    "sinterstore sunionstore sdiffstore zadd zrem zincrby zpopmin zpopmax zremrangebyscore zremrangebyrank "
    "zremrangebylex zunionstore zinterstore zdiffstore xadd xdel xtrim xgroup xack xclaim xautoclaim xsetid "
    "restore flushdb flushall copy move swapdb pfadd pfmerge geoadd setbit bitop bitfield eval evalsha fcall "
    "publish".split())


@dataclass
class Check:
    name: str
    ok: bool | None          # None: could not be checked (counts as NO-GO)
    evidence: str

    def to_dict(self) -> dict:
        return {"check": self.name, "result": {True: "ok", False: "NO-GO", None: "not checked"}[self.ok],
                "evidence": self.evidence}


@dataclass(frozen=True)
class RetireOptions:
    env: str
    prefix: str
    watch_seconds: float = 600.0
    min_age_seconds: float = 86_400.0
    archive: str | None = None
    kind: str = "auto"       # fargate | elasticache | auto (from the host name)


@dataclass
class Watch:
    """What the watch window saw on the old Redis."""

    foreign_clients: dict[str, str] = field(default_factory=dict)   # addr -> name/cmd
    peak_clients: int = 0
    writes: dict[str, int] = field(default_factory=dict)
    client_list_refused: str | None = None
    commandstats_refused: str | None = None
    samples: int = 0
    nodes: list[str] = field(default_factory=list)


# --- SSM -------------------------------------------------------------------------------------------

def ssm_check(clients: Clients, options: RetireOptions, old_host: str, now: float) -> Check:
    """Since when the endpoint parameter has named something other than the old Redis, from its history."""
    name = parameter_names(options.env, options.prefix)["endpoint"]
    with aws_errors(f"SSM parameter {name}"):
        try:
            versions = [p for page in clients.ssm.get_paginator("get_parameter_history").paginate(
                Name=name, WithDecryption=True) for p in page["Parameters"]]
        except bex.ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
            raise BadInput(f"SSM parameter {name} does not exist",
                           "check --env and --param-prefix (default /storefront/{env}/redis)") from None
    versions.sort(key=lambda p: int(p["Version"]))
    current = versions[-1]
    if _names(current["Value"], old_host):
        return Check("SSM points away", False, f"{name} v{current['Version']} still names the old Redis {old_host}")
    last_old = max((i for i, p in enumerate(versions) if _names(p["Value"], old_host)), default=None)
    if last_old is None:  # a different spelling of the host (IP vs DNS name), or history older than SSM keeps
        return Check("SSM points away", None, f"no stored version of {name} names {old_host}: cannot tell since "
                                              "when it points away; give --source with the host name SSM held")
    since = versions[last_old + 1]
    age = now - since["LastModifiedDate"].timestamp()
    what = f"{name} = {current['Value']} since v{since['Version']}, {format_duration(age)} ago"
    if age < options.min_age_seconds:
        soak = format_duration(options.min_age_seconds)
        return Check("SSM points away", False, f"{what}: less than --min-age {soak}")
    return Check("SSM points away", True, what)


def _names(value: str, host: str) -> bool:
    return value.strip().lower().split(":")[0] == host.lower()


# --- the watch window ------------------------------------------------------------------------------

def watch(endpoint: Endpoint, seconds: float) -> Watch:
    """Sample CLIENT LIST and INFO on every master for `seconds`; compare write counters at both ends."""
    seen = Watch()
    named = replace(endpoint, client_name=OWN_NAME)
    with translated_errors(endpoint):
        masters = discover(named).masters
        nodes = [(node.name, named.node_client(node.host, node.port)) for node in masters]
        seen.nodes = [name for name, _ in nodes]
        try:
            writes = _write_commands(nodes[0][1])
            before = {name: _commandstats(client, seen) for name, client in nodes}
            deadline = time.monotonic() + seconds
            while True:
                for name, client in nodes:
                    _sample(client, seen, name if len(nodes) > 1 else "")
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(SAMPLE_SECONDS, max(deadline - time.monotonic(), 0)))
            after = {name: _commandstats(client, seen) for name, client in nodes}
        finally:
            for _, client in nodes:
                client.close()
    for name, _ in nodes:
        if before[name] is not None and after[name] is not None:
            for command, calls in after[name].items():
                grew = calls - before[name].get(command, 0)
                if command in writes and grew > 0:
                    seen.writes[command] = seen.writes.get(command, 0) + grew
    return seen


def _write_commands(client: redis.Redis) -> frozenset[str]:
    """The commands the server flags `write` (redis-py parses COMMAND into name -> info)."""
    try:
        table = client.command()
    except redis.ResponseError:
        return FALLBACK_WRITES
    return frozenset(_text(name).lower() for name, info in table.items()
                     if "write" in map(_text, info.get("flags", ())))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _commandstats(client: redis.Redis, seen: Watch) -> dict[str, int] | None:
    try:
        stats = client.info("commandstats")
    except redis.ResponseError as exc:
        seen.commandstats_refused = str(exc)
        return None
    return {name.removeprefix("cmdstat_").replace("|", " ").split(" ")[0]: int(value["calls"])
            for name, value in stats.items()}


def _sample(client: redis.Redis, seen: Watch, node: str) -> None:
    seen.samples += 1
    try:
        own = client.client_id()
        for entry in client.client_list():
            name = entry.get("name", "")
            if int(entry["id"]) != own and not name.startswith(OWN_PREFIX):
                where = f" on {node}" if node else ""
                seen.foreign_clients[entry.get("addr", "?") + where] = f"name={name or '-'} last cmd={entry.get('cmd')}"
    except redis.ResponseError as exc:
        seen.client_list_refused = str(exc)
        connected = int(client.info("clients").get("connected_clients", 0))
        seen.peak_clients = max(seen.peak_clients, connected)


def watch_checks(seen: Watch, seconds: float) -> list[Check]:
    window = f"{format_duration(seconds)}, {seen.samples} samples of {len(seen.nodes)} primaries; replicas not watched"
    if seen.client_list_refused:
        others = seen.peak_clients - 1
        clients = Check("no other client", others <= 0,
                        f"CLIENT LIST refused ({seen.client_list_refused}): client names could not be checked; "
                        f"INFO clients saw up to {seen.peak_clients} connections, this tool's included ({window})")
    elif seen.foreign_clients:
        listed = "; ".join(f"{addr} {what}" for addr, what in list(seen.foreign_clients.items())[:5])
        clients = Check("no other client", False, f"{len(seen.foreign_clients)} other clients connected: {listed}")
    else:
        clients = Check("no other client", True, f"only redis-migrate connections ({window})")
    if seen.commandstats_refused:
        writes = Check("no writes", None, f"INFO commandstats refused ({seen.commandstats_refused}): writes could "
                                          "not be counted")
    elif seen.writes:
        listed = ", ".join(f"{name} x{count}" for name, count in sorted(seen.writes.items()))
        writes = Check("no writes", False, f"written during the window: {listed}")
    else:
        writes = Check("no writes", True, f"no write command ran ({window}); expiries are not counted")
    return [clients, writes]


# --- run dir and archive ---------------------------------------------------------------------------

def sync_check(run_dir: RunDir | None) -> Check:
    if run_dir is None:
        return Check("no sync running", True, "no --run-dir given: not checked for a sync")
    if SyncLedger.load(run_dir).running():
        return Check("no sync running", False, f"a sync is running on {run_dir.path}: stop it first")
    return Check("no sync running", True, f"no live sync on {run_dir.path}")


def archive_check(uri: str | None, clients: Clients) -> Check:
    if uri is None:
        return Check("archive verified", True, "no --archive given: not checked (without one, nothing is left to "
                                               "restore from once the old Redis is gone)")
    try:
        source = ArchiveSegments(uri, clients)
    except BadInput as exc:
        return Check("archive verified", False, exc.message)
    bad = source.check()
    if bad:
        return Check("archive verified", False, f"{len(bad)} objects differ from the manifest: {', '.join(bad[:3])}")
    return Check("archive verified", True, f"{len(source.order)} segments at {source.uri} match their SHA-256")


# --- verdict ---------------------------------------------------------------------------------------

def next_step(kind: str, host: str) -> str:
    owner = ("Then make the same change in the stack that owns it (CloudFormation/CDK/Terraform), so the next "
             "deploy does not bring it back.")
    if kind == "elasticache":
        return (f"Delete the old ElastiCache cluster ({host}) with a final snapshot: aws elasticache "
                "delete-replication-group --replication-group-id ID --final-snapshot-identifier ID-final "
                "(or delete-cache-cluster --final-snapshot-identifier). " + owner)
    return (f"Scale the old Fargate Redis service ({host}) to 0 first and keep its task definition: aws ecs "
            "update-service --cluster CLUSTER --service SERVICE --desired-count 0. Remove the service only after "
            "a further soak. " + owner)


def old_kind(options: RetireOptions, host: str) -> str:
    if options.kind != "auto":
        return options.kind
    return "elasticache" if host.endswith(".cache.amazonaws.com") else "fargate"


def retire_check(endpoint: Endpoint, run_dir: RunDir | None, options: RetireOptions, clients: Clients) -> dict:
    """Every check, the verdict (GO only when all are ok) and the exact next step."""
    host = str(parse_url(endpoint.url).get("host"))
    checks = [ssm_check(clients, options, host, time.time()), sync_check(run_dir)]
    checks += watch_checks(watch(endpoint, options.watch_seconds), options.watch_seconds)
    checks.append(archive_check(options.archive, clients))
    go = all(check.ok for check in checks)
    kind = old_kind(options, host)
    return {"verdict": "GO" if go else "NO-GO", "old_redis": endpoint.redacted, "kind": kind,
            "checks": [check.to_dict() for check in checks],
            "next_step": next_step(kind, host) if go else "Do not remove the old Redis yet: fix what is NO-GO above "
                                                          "and run retire-check again."}
