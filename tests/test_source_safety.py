"""The dump is safe on a production source: no long pause, no memory spike, exact TTLs on old servers.

These are safety bounds, not speed targets: they hold because each request the dump sends is short,
and they fail by a wide margin when one is not (a batch script DUMPing hundreds of MB).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time

import psutil
import pytest
import redis

import testbed
from reliability import invoke, popen, spawn
from snapshot import assert_same, snapshot

MB = 1 << 20
BIG_VALUES, BIG_SIZE = 60, 5 * MB      # scaled from the 100 x 5 MB to keep the test near 30 s
MID_VALUES, MID_SIZE = 2_400, 100 << 10  # and from its 4,000 x 100 KB
MAX_WAIT_S = 0.250          # no client request on the source waits longer
MAX_PEAK_GROWTH = 128 * MB  # the source's used_memory_peak over its used_memory once seeded
MAX_TOOL_RSS = 400 * MB     # the dump process and its children, together


class LatencyProbe:
    """An application's client: GET and PING in a loop, keeping the longest wait. It runs in a process
    of its own, so that nothing in the test's process (the RSS polling) delays it."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("fork")
        self.url = url
        self.stop = context.Event()
        self._longest = context.Value("d", 0.0)
        self._requests = context.Value("q", 0)
        self.process = context.Process(target=self._run, daemon=True)

    def __enter__(self) -> LatencyProbe:
        self.process.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.process.join(10)

    @property
    def longest(self) -> float:
        return self._longest.value

    @property
    def requests(self) -> int:
        return self._requests.value

    def _run(self) -> None:  # in the probe's process
        client = redis.Redis.from_url(self.url, socket_timeout=30)
        requests = (lambda: client.get("probe:small"), client.ping)
        while not self.stop.is_set():
            for request in requests:
                started = time.perf_counter()
                request()
                waited = time.perf_counter() - started
                with self._longest.get_lock():
                    self._longest.value = max(self._longest.value, waited)
                self._requests.value += 1
            time.sleep(0.002)


def _seed_big_values(client: redis.Redis, big: int = BIG_VALUES, mid: int = MID_VALUES) -> None:
    """Incompressible values, written a few at a time so that seeding itself leaves no memory peak."""
    pipe = client.pipeline(transaction=False)
    for index in range(big):
        pipe.set(f"big:{index}", os.urandom(BIG_SIZE), px=3_600_000 if index % 3 == 0 else None)
        pipe.execute()
    for index in range(mid):
        pipe.set(f"mid:{index}", os.urandom(MID_SIZE), px=3_600_000 if index % 4 == 0 else None)
        if index % 20 == 19:
            pipe.execute()
    pipe.execute()
    client.set("probe:small", b"x" * 100)


def _family_rss(process: psutil.Process) -> int:
    try:
        family = [process, *process.children(recursive=True)]
        return sum(member.memory_info().rss for member in family)
    except psutil.Error:  # exited between the two calls
        return 0


def _wait_measuring_rss(process: subprocess.Popen) -> int:
    """Wait for the process; its peak RSS: the kernel's high-water mark, or the RSS of the process and
    its children together as polled (polled seldom: the poll costs CPU that the source then lacks)."""
    watched, peak = psutil.Process(process.pid), 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return max(peak, usage.ru_maxrss * 1024)
        peak = max(peak, _family_rss(watched))
        time.sleep(0.1)


def _dump_watched(source_url: str, run_dir) -> None:
    """Dump while an application's client probes the source; assert that it never waited long, and that
    the dump's memory stayed bounded."""
    with LatencyProbe(source_url) as probe:
        # In production the tool runs on another host than the source; here they share two cores, so the
        # tool yields its CPU, lest its own work be counted as the source's pauses.
        dumping = popen("dump", "--source", source_url, "--run-dir", run_dir, preexec_fn=lambda: os.nice(10))
        tool_rss = _wait_measuring_rss(dumping)
    stdout, stderr = dumping.communicate()
    assert dumping.returncode == 0, stderr
    print(f"longest wait {probe.longest * 1000:.0f} ms over {probe.requests} requests, dump RSS {tool_rss / MB:.0f} MB")
    assert probe.requests > 100, "the probe did not run alongside the dump"
    assert probe.longest <= MAX_WAIT_S, f"a client waited {probe.longest * 1000:.0f} ms on the source"
    assert tool_rss <= MAX_TOOL_RSS, f"the dump's RSS reached {tool_rss / MB:.0f} MB"


def test_dump_of_big_values_keeps_the_source_responsive_and_its_memory_bounded(standalone_source,
                                                                               serverless_target, run_dir):
    standalone_source.restart()  # used_memory_peak only grows: start from a fresh server
    client = standalone_source.client()
    _seed_big_values(client)
    seeded = client.info("memory")
    _dump_watched(standalone_source.url(), run_dir)
    peak_growth = client.info("memory")["used_memory_peak"] - seeded["used_memory"]
    print(f"source peak +{peak_growth / MB:.0f} MB")
    assert peak_growth <= MAX_PEAK_GROWTH, f"the source's memory peaked {peak_growth / MB:.0f} MB over its data"
    before = snapshot(standalone_source)  # read after the peak: its own reads would raise it

    replayed = spawn("replay", "--target", serverless_target.url(), "--run-dir", run_dir)
    assert replayed.exit_code == 0, str(replayed)
    assert len(before) == BIG_VALUES + MID_VALUES + 1
    assert_same(before, snapshot(serverless_target), ttl_tolerance_ms=0)


def test_dump_without_memory_usage_reads_big_values_in_bounded_rounds_too(serverless_target, cluster_target,
                                                                          run_dir):
    """ElastiCache Serverless refuses MEMORY, and so the script: sizes are estimated (STRLEN, HLEN, ...)
    and the DUMPs still go in rounds of bounded bytes. The serverless-like node is the source here."""
    _seed_big_values(serverless_target.first.client(), big=BIG_VALUES // 3, mid=MID_VALUES // 6)
    _dump_watched(serverless_target.url(), run_dir)
    replayed = spawn("replay", "--target", cluster_target.url(), "--run-dir", run_dir)
    assert replayed.exit_code == 0, str(replayed)
    before = snapshot(serverless_target)
    assert len(before) == BIG_VALUES // 3 + MID_VALUES // 6 + 1
    assert_same(before, snapshot(cluster_target), ttl_tolerance_ms=0)


@pytest.mark.parametrize("options", [(), ("--batch-bytes", 1 << 30)], ids=["defaults", "hash-dumped-in-script"])
def test_old_source_ttls_are_not_shortened_by_a_slow_key_in_the_batch(tmp_path, serverless_target, run_dir, options):
    """Redis 6.2 has no PEXPIRETIME: the expiry is TIME + PTTL, and PTTL counts down while a script runs.
    With the defaults the big hash is DUMPed outside the script; with a huge budget, inside it."""
    source = testbed.start_standalone(tmp_path / "old-source", password="old-source-pw",
                                      binary=testbed.old_redis_binary())
    try:
        client = source.client()
        pipe = client.pipeline(transaction=False)
        for start in range(0, 300_000, 10_000):
            pipe.hset("slow:hash", mapping={f"field:{i}": f"value:{i}" for i in range(start, start + 10_000)})
            pipe.execute()
        expire_at = int(time.time() * 1000) + 3_600_000
        names = ["slow:hash", *(f"ttl:{index}" for index in range(72))]
        for index, name in enumerate(names):  # one SCAN batch: each key's place after the hash is random
            if index:
                pipe.set(name, index)
            pipe.pexpireat(name, expire_at + index)
        pipe.execute()
        assert invoke("dump", "--source", source.url(), "--run-dir", run_dir, *options).exit_code == 0
        assert invoke("replay", "--target", serverless_target.url(), "--run-dir", run_dir).exit_code == 0
    finally:
        source.stop()
    target = serverless_target.first.client()
    off = {name: expire_at + index - target.pexpiretime(name) for index, name in enumerate(names)}
    off = {name: ms for name, ms in off.items() if abs(ms) > 20}
    assert not off, f"expiries off by more than 20 ms (key: ms early): {off}"
    assert target.hlen("slow:hash") == 300_000
