"""Faults on real servers: kill -9, a target restarted mid-replay, cut connections, latency, a black hole,
a full disk and a source under writes. Every outcome is checked with the independent tests/snapshot.py.

The rule throughout: a run either ends exact, or stops with a clear non-zero message and a rerun ends
exact. It never ends green over missing keys, and it never hangs (every call here has a hard timeout).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import seed_data
import testbed
from conftest import SOURCE_PASSWORD, TARGET_PASSWORD
from faultproxy import ArgumentLimit, FaultProxy
from migrate.datapath.segments import read_segment
from reliability import assert_clean_error, ledger, popen, spawn
from snapshot import assert_same, snapshot

RUN_TIMEOUT = 240


def phase(run_dir: Path) -> str:
    """Where a killed run was: in the dump, in the replay after the dump, in the verify, or done."""
    if "finished_at" not in ledger(run_dir, "dump"):
        return "dump"
    if "finished_at" not in ledger(run_dir, "replay"):
        return "replay"
    return "verify" if not (run_dir / "verify.json").exists() else "done"


def plain_url(port: int, password: str, **query) -> str:
    tail = "&".join(f"{k}={v}" for k, v in query.items())
    return f"redis://:{password}@127.0.0.1:{port}/0" + (f"?{tail}" if tail else "")


def tls_url(port: int, password: str, certs: testbed.Certs, **query) -> str:
    tail = "".join(f"&{k}={v}" for k, v in query.items())
    return f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}{tail}"


# --- a target and a source reached only through a fault proxy -------------------------------------------

@pytest.fixture(scope="module")
def target_proxy(bed_dir, certs):
    """A serverless-like TLS node that announces the proxy's port, so every connection (discovery too)
    goes through the proxy."""
    listener = FaultProxy.listener()
    port = listener.getsockname()[1]
    node = testbed.start_cluster(bed_dir / f"proxied-target-{port}", 1, password=TARGET_PASSWORD, certs=certs,
                                 restricted=True, extra=("--cluster-announce-tls-port", str(port),
                                                         "--cluster-announce-port", str(port)))
    proxy = FaultProxy(node.first.port, listen=listener, max_seconds=1800).start()
    yield node, proxy
    proxy.stop()
    node.stop()


@pytest.fixture
def proxied_target(target_proxy, certs):
    node, proxy = target_proxy
    node.flush()
    proxy.configure()
    return node, proxy, tls_url(proxy.port, TARGET_PASSWORD, certs)


@pytest.fixture
def proxied_source(standalone_source):
    with FaultProxy(standalone_source.port, max_seconds=600) as proxy:
        yield standalone_source, proxy, plain_url(proxy.port, SOURCE_PASSWORD)


@pytest.fixture(scope="module")
def restartable_target(bed_dir, certs):
    """A one-node TLS cluster owning every slot, of our own, to restart without disturbing the shared
    target. SAVE stays enabled, so a test can choose whether a restart keeps the data."""
    node = testbed.start_cluster(bed_dir / "restartable", 1, password=TARGET_PASSWORD, certs=certs)
    yield node
    node.stop()


# --- kill -9 -----------------------------------------------------------------------------------------

def kill_repeatedly(args, run_dir: Path, count: int, moment: Callable[[subprocess.Popen, int], None]
                    ) -> list[tuple[str, str]]:
    """Start `args` and kill -9 it when `moment` returns, `count` times; returns (moment, phase) per kill."""
    kills: list[tuple[str, str]] = []
    for _ in range(count):
        process = popen(*args)
        when = moment(process, len(kills))
        if process.poll() is not None:
            out, err = process.communicate()
            assert process.returncode == 0, err
            break  # it finished before the kill: the rest is the final run
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        kills.append((when, phase(run_dir)))
    return kills


def after_random_delays(rng: random.Random, early: tuple[float, float], late: tuple[float, float]):
    """Kill moments in wall time: the first four early in the run (a soak's random mix)."""
    def moment(process: subprocess.Popen, index: int) -> str:
        delay = rng.uniform(*early) if index < 4 else rng.uniform(*late)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        return f"{delay:.2f}s"
    return moment


def after_observed_progress(rng: random.Random, run_dir: Path, count: int, source_bytes: Callable[[], int],
                            target_commands: Callable[[], int]):
    """Kill moments from the stages' own progress, whatever the machine's speed: the first half of the kills
    once the dump has read a random number of bytes from the source, the rest once the replay (after the
    dump) has sent a random number of commands to the target."""
    def moment(process: subprocess.Popen, index: int) -> str:
        wanted = "dump" if index < count // 2 else "replay"
        progress = source_bytes if wanted == "dump" else target_commands
        start, goal = progress(), rng.randint(150_000, 2_000_000) if wanted == "dump" else rng.randint(300, 6000)
        while process.poll() is None and not (phase(run_dir) == wanted and progress() - start >= goal):
            time.sleep(0.005)
        return f"{wanted}+{goal}"
    return moment


def test_kill_9_at_ten_random_moments_then_resume_is_exact(proxied_source, serverless_target, run_dir):
    """12 kills at seeded random moments across dump and replay; big keys go through struct chunks."""
    source, proxy, source_url = proxied_source
    proxy.configure(latency_ms=2)  # stretches the dump so that kills land in it too
    seed_data.seed(source.client(), 25_000, seed=31, big_keys=True, short_ttl_keys=0)
    args = ("run", "--source", source_url, "--target", serverless_target.url(), "--run-dir", run_dir,
            "--scan-count", 200, "--max-payload", 256 * 1024)
    target = serverless_target.first.client()
    moment = after_observed_progress(random.Random(20261126), run_dir, 12, lambda: proxy.forwarded,
                                     lambda: target.info("stats")["total_commands_processed"])
    kills = kill_repeatedly((*args, "--max-ops-per-sec", 6000), run_dir, 12, moment)  # throttled: kills land in it
    final = spawn(*args, timeout=RUN_TIMEOUT)
    assert final.exit_code == 0, str(final)
    assert len(kills) >= 10, kills
    phases = [p for _, p in kills]
    assert phases.count("dump") >= 2 and phases.count("replay") >= 2, kills
    assert_same(snapshot(source), snapshot(serverless_target))
    counts = json.loads(spawn("status", "--run-dir", run_dir, "--json").stdout)["counts"]
    assert counts["restored"] + counts["struct_written"] == 25_000, counts  # each key once, resumes or not


@pytest.mark.parametrize("when", ["dump", "verify"])
def test_kill_9_leaves_no_child_and_no_lock_behind(standalone_source, serverless_target, run_dir, when):
    """`run` forks a dump process and verify's scan workers. Killed with SIGKILL, it cannot stop them:
    they must die with it, or they keep scanning, keep the caller's pipes open, and hold the run lock
    (their fork inherited it), so that the rerun is refused as locked."""
    import psutil
    seed_data.seed(standalone_source.client(), 12_000, seed=33, big_keys=False, short_ttl_keys=0)
    args = ("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    process = popen(*args)
    deadline = time.monotonic() + 120
    children: list = []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            children = psutil.Process(process.pid).children(recursive=True)
            if children and (phase(run_dir) == "dump" if when == "dump" else phase(run_dir) == "verify"):
                break
            time.sleep(0.005)
        assert process.poll() is None and children, f"never saw the {when} stage's children"
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)  # returns only once no child holds the pipes
    finally:
        if process.poll() is None:
            process.kill()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
    rerun = spawn(*args, timeout=RUN_TIMEOUT)
    assert rerun.exit_code == 0, str(rerun)
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_soak_kills_and_cuts_on_both_sides(standalone_source, proxied_target, run_dir, seed):
    """Soak (minutes): 40 kills at random moments while the proxies cut connections on both sides."""
    node, target_proxy, target_url = proxied_target
    target_proxy.configure(seed=seed, cut_after_bytes=(200_000, 2_000_000), max_cuts=60)
    seed_data.seed(standalone_source.client(), 150_000, seed=90 + seed, big_keys=True, short_ttl_keys=0)
    with FaultProxy(standalone_source.port, seed=seed, cut_after_bytes=(200_000, 2_000_000), max_cuts=60,
                    max_seconds=1500) as source_proxy:
        args = ("run", "--source", plain_url(source_proxy.port, SOURCE_PASSWORD), "--target", target_url,
                "--run-dir", run_dir, "--max-ops-per-sec", 15_000, "--max-payload", 256 * 1024)
        kills = kill_repeatedly(args, run_dir, 40, after_random_delays(random.Random(seed), (0.5, 2.0), (0.5, 4.0)))
        final = spawn(*args, timeout=900)
    assert final.exit_code == 0, str(final)
    assert len(kills) >= 30, kills
    assert_same(snapshot(standalone_source), snapshot(node))


# --- a target restarted mid-replay -------------------------------------------------------------------------

@pytest.mark.parametrize("keeps_data", [False, True], ids=["data-lost", "data-kept"])
def test_target_restarted_mid_replay(standalone_source, restartable_target, run_dir, keeps_data):
    node = restartable_target.first
    node.flush()
    seed_data.seed(standalone_source.client(), 8000, seed=17, big_keys=False, short_ttl_keys=0)
    dumped = spawn("dump", "--source", standalone_source.url(), "--run-dir", run_dir, "--segment-records", 1000)
    assert dumped.exit_code == 0, str(dumped)  # eight segments: the restart comes after two, well before the end
    process = popen("replay", "--target", restartable_target.url(), "--run-dir", run_dir, "--max-ops-per-sec", 4000)
    try:
        deadline = time.monotonic() + 60
        while len(ledger(run_dir, "replay").get("segments_done", [])) < 2:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        if keeps_data:
            node.client().save()  # a snapshot: what a node with persistence has on disk (writes after it are lost)
        node.stop()
        time.sleep(0.3)
        node.start()
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        (node.directory / "dump.rdb").unlink(missing_ok=True)
    if process.returncode != 0:  # a clear stop is allowed; then a rerun must finish the job
        assert "Traceback" not in err and "hint:" in err, err
        rerun = spawn("replay", "--target", restartable_target.url(), "--run-dir", run_dir, timeout=RUN_TIMEOUT)
        assert rerun.exit_code == 0, str(rerun)
    assert_same(snapshot(standalone_source), snapshot(restartable_target))


def test_a_rerun_after_the_target_lost_its_data_does_not_go_green(standalone_source, restartable_target, run_dir):
    """The target loses everything while no replay runs (say, between a kill and the rerun)."""
    node = restartable_target.first
    node.flush()
    seed_data.seed(standalone_source.client(), 6000, seed=18, big_keys=False, short_ttl_keys=0)
    assert spawn("dump", "--source", standalone_source.url(), "--run-dir", run_dir,
                 "--segment-records", 1000).exit_code == 0  # six segments: the kill comes after the first
    process = popen("replay", "--target", restartable_target.url(), "--run-dir", run_dir, "--max-ops-per-sec", 4000)
    deadline = time.monotonic() + 60
    while not ledger(run_dir, "replay").get("segments_done") and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    node.flush()  # what a restart without persistence does
    rerun = spawn("replay", "--target", restartable_target.url(), "--run-dir", run_dir, timeout=RUN_TIMEOUT)
    if rerun.exit_code != 0:
        assert_clean_error(rerun, rerun.exit_code, "lost")
        rerun = spawn("replay", "--target", restartable_target.url(), "--run-dir", run_dir, timeout=RUN_TIMEOUT)
        assert rerun.exit_code == 0, str(rerun)
    assert_same(snapshot(standalone_source), snapshot(restartable_target))


# --- the network -----------------------------------------------------------------------------------------

def test_connections_cut_on_the_source_side(proxied_source, serverless_target, run_dir):
    source, proxy, source_url = proxied_source
    proxy.configure(seed=5, cut_after_bytes=(50_000, 400_000), max_cuts=8)
    seed_data.seed(source.client(), 12_000, seed=41, big_keys=True, short_ttl_keys=0)
    outcome = spawn("run", "--source", source_url, "--target", serverless_target.url(), "--run-dir", run_dir,
                    "--scan-count", 200, "--max-payload", 256 * 1024, timeout=RUN_TIMEOUT)
    assert outcome.exit_code == 0, str(outcome)
    assert proxy.cuts >= 4, proxy.cuts
    assert_same(snapshot(source), snapshot(serverless_target))


def test_connections_cut_on_the_target_side(standalone_source, proxied_target, run_dir):
    node, proxy, target_url = proxied_target
    proxy.configure(seed=6, cut_after_bytes=(50_000, 400_000), max_cuts=8)
    seed_data.seed(standalone_source.client(), 12_000, seed=42, big_keys=True, short_ttl_keys=0)
    outcome = spawn("run", "--source", standalone_source.url(), "--target", target_url, "--run-dir", run_dir,
                    "--max-payload", 256 * 1024, timeout=RUN_TIMEOUT)
    assert outcome.exit_code == 0, str(outcome)
    assert proxy.cuts >= 4, proxy.cuts
    assert_same(snapshot(standalone_source), snapshot(node))


def test_cut_all_connections_on_demand_during_replay(standalone_source, proxied_target, run_dir):
    node, proxy, target_url = proxied_target
    seed_data.seed(standalone_source.client(), 20_000, seed=43, big_keys=False, short_ttl_keys=0)
    process = popen("run", "--source", standalone_source.url(), "--target", target_url, "--run-dir", run_dir,
                    "--max-ops-per-sec", 8_000)
    try:
        deadline = time.monotonic() + 60
        while not (ledger(run_dir, "replay").get("started_at") and proxy.live()) and time.monotonic() < deadline:
            time.sleep(0.01)  # replay is writing: its connections are open through the proxy
        for _ in range(6):
            if process.poll() is not None:
                break
            proxy.cut_all()
            time.sleep(0.3)
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert proxy.cuts >= 3, proxy.cuts
    assert_same(snapshot(standalone_source), snapshot(node))


def test_20ms_latency_on_the_target(standalone_source, proxied_target, run_dir):
    node, proxy, target_url = proxied_target
    proxy.configure(latency_ms=20)
    seed_data.seed(standalone_source.client(), 5_000, seed=44, big_keys=False, short_ttl_keys=0)
    started = time.monotonic()
    outcome = spawn("run", "--source", standalone_source.url(), "--target", target_url, "--run-dir", run_dir,
                    timeout=RUN_TIMEOUT)
    assert outcome.exit_code == 0, str(outcome)
    assert time.monotonic() - started < 60
    assert_same(snapshot(standalone_source), snapshot(node))


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_black_hole_is_escaped_by_socket_timeouts(standalone_source, proxied_target, certs, run_dir, side):
    """The link forwards nothing for 4 s, mid-dump or mid-replay: only a socket timeout (1 s here, from the
    URL) gets the run out, and it reconnects and finishes exact."""
    node, target_proxy, _ = proxied_target
    seed_data.seed(standalone_source.client(), 10_000, seed=45, big_keys=False, short_ttl_keys=0)
    with FaultProxy(standalone_source.port, latency_ms=2, max_seconds=300) as source_proxy:
        source_url = plain_url(source_proxy.port, SOURCE_PASSWORD, socket_timeout=1)
        target_url = tls_url(target_proxy.port, TARGET_PASSWORD, certs, socket_timeout=1)
        process = popen("run", "--source", source_url, "--target", target_url, "--run-dir", run_dir,
                        "--max-ops-per-sec", 8_000, "--scan-count", 100, "--segment-records", 1000)
        started = time.monotonic()
        try:
            ready = ((lambda: ledger(run_dir, "dump").get("masters")) if side == "source"
                     else (lambda: ledger(run_dir, "replay").get("segments_done")))
            while not ready() and time.monotonic() - started < 60:
                time.sleep(0.02)
            stalled_in = phase(run_dir)
            (source_proxy if side == "source" else target_proxy).stall(4)
            out, err = process.communicate(timeout=RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
    assert stalled_in == "dump" if side == "source" else stalled_in != "done"  # replay runs alongside the dump
    assert process.returncode == 0, err
    assert time.monotonic() - started < 60
    assert_same(snapshot(standalone_source), snapshot(node))


# --- the disk fills mid-dump -------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (the dump below needs about 6), grown later with remount; None where mounting is
    not allowed."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, timeout=30)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _fsize_limit(limit: int):
    def apply() -> None:
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_mid_dump(standalone_source, serverless_target, small_disk, tmp_path):
    seed_data.seed(standalone_source.client(), 40_000, seed=51, big_keys=False, short_ttl_keys=0)
    run_dir = (small_disk or tmp_path) / "run"
    args = ("dump", "--source", standalone_source.url(), "--run-dir", run_dir, "--scan-count", 500)
    if small_disk is not None:
        full = spawn(*args, timeout=RUN_TIMEOUT)
    else:  # no mount allowed: a per-file size limit gives EFBIG on the segment write instead
        done = subprocess.run(__import__("reliability").command(*args), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, env=__import__("reliability").child_env(),
                              preexec_fn=_fsize_limit(1_500_000))
        full = __import__("reliability").Outcome(done.returncode, done.stdout, done.stderr)
    assert_clean_error(full, 3, "cannot write", "free disk space", "rerun")
    segments = sorted((run_dir / "segments").iterdir())
    durable = [p for p in segments if not p.name.startswith(".")]
    if small_disk is not None:
        assert durable, "some segments fit before the disk filled"
    for path in durable:
        read_segment(path)  # whole and checksummed: no partial segment is left under a segment name
    assert not ledger(run_dir, "dump").get("finished_at")
    if small_disk is not None:
        subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True, timeout=30)
        resumed = spawn(*args, timeout=RUN_TIMEOUT)
    else:
        resumed = spawn(*args, timeout=RUN_TIMEOUT)
    assert resumed.exit_code == 0, str(resumed)
    replayed = spawn("replay", "--target", serverless_target.url(), "--run-dir", run_dir, timeout=RUN_TIMEOUT)
    assert replayed.exit_code == 0, str(replayed)
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


# --- a source under writes -------------------------------------------------------------------------------

def test_source_under_concurrent_writes(standalone_source, serverless_target, run_dir):
    """A bounded writer changes, adds and deletes `hot:*` keys while `run` copies. Every other key is exact
    at once; after the writes stop, verify --repair --delete-extra converges, and a plain verify and the
    independent snapshot agree that the target equals the source."""
    client = standalone_source.client()
    seed_data.seed(client, 15_000, seed=61, big_keys=False, short_ttl_keys=0)
    for index in range(2000):
        client.set(f"hot:{index}", "v0")
    stop = threading.Event()
    written = []

    def writer() -> None:
        rng = random.Random(7)
        writes = client.pipeline(transaction=False)
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline and len(written) < 200_000:
            for _ in range(100):
                key = f"hot:{rng.randrange(4000)}"
                if rng.random() < 0.2:
                    writes.delete(key)
                else:
                    writes.set(key, f"v{len(written)}", px=rng.choice([None, 3_600_000]))
                written.append(key)
            writes.execute()
            time.sleep(0.005)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        outcome = spawn("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                        "--run-dir", run_dir, "--max-ops-per-sec", 20_000, timeout=RUN_TIMEOUT)
    finally:
        stop.set()
        thread.join(30)
    assert outcome.exit_code in (0, 1), str(outcome)  # 1: run's verify saw the writes in flight
    assert "Traceback" not in outcome.output
    assert len(written) > 1000
    cold = lambda snap: {k: v for k, v in snap.items() if not k.startswith(b"hot:")}  # noqa: E731
    assert_same(cold(snapshot(standalone_source)), cold(snapshot(serverless_target)))
    sides = ("--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    repaired = spawn("verify", *sides, "--rounds", 3, "--repair", "--delete-extra", timeout=RUN_TIMEOUT)
    assert repaired.exit_code == 0, str(repaired)
    final = spawn("verify", *sides, timeout=RUN_TIMEOUT)
    assert final.exit_code == 0, str(final)
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


# --- ElastiCache Serverless's argument limit ---------------------------------------------------------

@pytest.fixture(scope="module")
def argument_limited_target(bed_dir):
    """A plain serverless-like node behind a proxy that refuses any command over 3,999 arguments."""
    listener = FaultProxy.listener()
    port = listener.getsockname()[1]
    node = testbed.start_cluster(bed_dir / f"argument-limited-{port}", 1, password=TARGET_PASSWORD, restricted=True,
                                 extra=("--cluster-announce-port", str(port)))
    limit = ArgumentLimit(3999)
    proxy = FaultProxy(node.first.port, listen=listener, max_seconds=1800, client_filter=limit).start()
    yield node, limit, plain_url(port, TARGET_PASSWORD)
    proxy.stop()
    node.stop()


@pytest.fixture
def compact_collections(standalone_source):
    """A source whose hashes, sets and zsets of thousands of members stay compact, so HSCAN/SSCAN/ZSCAN return
    each whole in one reply whatever the COUNT (as a source with raised *-max-listpack-entries does)."""
    client = standalone_source.client()
    settings = {"hash-max-listpack-entries": 10000, "zset-max-listpack-entries": 10000,
                "set-max-intset-entries": 10000}
    before = {name: client.config_get(name)[name] for name in settings}
    for name, value in settings.items():
        client.config_set(name, value)
    yield client
    for name, value in before.items():
        client.config_set(name, value)


def test_type_by_type_writes_stay_under_the_serverless_argument_limit(standalone_source, compact_collections,
                                                                      argument_limited_target, run_dir):
    client = compact_collections
    client.hset("h", mapping={f"field-{i}": i for i in range(3000)})
    client.zadd("z", {f"member-{i}": i for i in range(3000)})
    client.sadd("s", *range(3000))
    client.rpush("l", *range(4500))
    client.set("plain", "x", px=3_600_000)
    assert client.object("encoding", "h") == b"listpack" and client.object("encoding", "s") == b"intset"
    assert len(client.hscan("h", 0, count=10)[1]) == 3000  # the whole hash in one reply
    node, limit, url = argument_limited_target
    node.flush()
    outcome = spawn("run", "--source", standalone_source.url(), "--target", url, "--run-dir", run_dir,
                    "--mode", "struct", timeout=RUN_TIMEOUT)
    assert outcome.exit_code == 0, str(outcome)
    assert limit.refused == 0
    assert 1000 < limit.largest <= 3999  # big commands went through, each under the limit
    assert_same(snapshot(standalone_source), snapshot(node))
