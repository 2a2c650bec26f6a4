"""bring-back's quiet check (cloud/quiet.py): another copy-back round runs only while the apps still write on the
cache. Real servers: the standalone old Redis and the serverless-like TLS cache."""

from __future__ import annotations

import threading
import time

import pytest

from migrate.cloud.bring_back import CopyBack, copy_back_rounds
from migrate.net.endpoints import Endpoint, discover
from migrate.rundir import RunDir
from snapshot import assert_same, snapshot

THRESHOLD = 100


@pytest.fixture
def copier(standalone_source, serverless_target, run_dir):
    """Both sides hold the same 2,000 keys (a tenth with a long TTL); the apps then wrote 300 keys on the cache."""
    old, cache = standalone_source.client(), serverless_target.first.client()
    expire_at = int(time.time() * 1000) + 3_600_000
    for side in (old, cache):
        with side.pipeline(transaction=False) as pipe:
            for index in range(2000):
                pipe.set(f"k:{index}", f"v{index}", pxat=expire_at if index % 10 == 0 else None)
            pipe.execute()
    for index in range(300):
        cache.set(f"k:{index}", f"written on the cache {index}")
    copy_back = CopyBack(discover(Endpoint.from_url("source", standalone_source.url())),
                         discover(Endpoint.from_url("target", serverless_target.url())), RunDir(run_dir, create=True))
    yield copy_back
    copy_back.close()


def found_keys(copier: CopyBack) -> list[bytes]:
    differences, _ = copier.compare()
    assert len(differences) == 300
    return [difference.key for difference in differences]


def test_a_quiet_cache_ends_the_rounds_after_the_first(copier, standalone_source, serverless_target):
    rounds = copy_back_rounds(copier, THRESHOLD)
    assert len(rounds) == 1 and rounds[0]["copied"] == 300, rounds
    assert rounds[0]["quiet_check"]["quiet"] is True and "steady" not in rounds[0]
    assert_same(snapshot(serverless_target), snapshot(standalone_source), ttl_tolerance_ms=0)


@pytest.mark.parametrize("write", ["rewrite a hot key", "create a key", "delete a key", "give a key a TTL"])
def test_any_write_since_the_scan_keeps_the_rounds_going(copier, serverless_target, write):
    found = found_keys(copier)
    cache = serverless_target.first.client()
    if write == "rewrite a hot key":
        cache.set("k:7", "written again")
    elif write == "create a key":
        cache.set("session:new", "a new session")
    elif write == "delete a key":
        cache.delete("k:1500")
    else:
        cache.pexpire("k:8", 600_000)
    check = copier.quiet(found, THRESHOLD)
    assert check["quiet"] is False, check


def test_an_expiry_is_not_a_write(copier, standalone_source, serverless_target):
    cache, expire_at = serverless_target.first.client(), int(time.time() * 1000) + 1500
    for side in (standalone_source.client(), cache):
        side.set("k:short", "expires before the check", pxat=expire_at)
    found = found_keys(copier)
    while cache.exists("k:short"):
        time.sleep(0.05)
    assert copier.quiet(found, THRESHOLD)["quiet"] is True


def test_a_threshold_of_one_samples_every_key(copier, serverless_target):
    """3 x keys / threshold keys are read again: with a threshold of 1, all of them, so one changed value among
    keys the round did not find is seen (with 100, a change that rare may go unseen until the straggler round)."""
    found = found_keys(copier)
    serverless_target.first.client().set("k:1999", "changed, same name")
    assert copier.quiet(found, 1)["quiet"] is False


def test_apps_still_writing_get_another_round(copier, serverless_target):
    """An app rewriting the keys it wrote (a storefront's carts) while the rounds run: the check sees it after the
    first round, so a second round runs, and the rounds then stop by themselves (they cannot converge at that
    rate: the straggler round takes the rest)."""
    stop = threading.Event()

    def app() -> None:
        cache, written = serverless_target.first.client(), 0
        while not stop.is_set():
            cache.set(f"k:{written % 300}", f"rewritten {written}")
            written += 1
            time.sleep(0.002)

    writer = threading.Thread(target=app, daemon=True)
    writer.start()
    try:
        rounds = copy_back_rounds(copier, THRESHOLD)
    finally:
        stop.set()
        writer.join()
    assert rounds[0]["quiet_check"]["quiet"] is False and "sampled keys" in rounds[0]["quiet_check"]["changed"]
    assert len(rounds) >= 2 and rounds[1]["scanned"] == "cache", rounds
