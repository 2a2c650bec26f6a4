"""`redis-migrate sync --slots`: two syncs split one source by hash slot onto one shared target, as two ECS
tasks would, each with its own run dir, while an app (tests/appwriter.py) writes to the source the whole time.

What must hold: after both stop, target == source exactly (tests/snapshot.py); and a sync never writes or
deletes a key outside its range on the target, even through a reconcile (a FLUSHDB on the source is
reconciled for the range only), so keys placed on the target in the other range, which the source does not
have, stay untouched until that range's own sync removes them. Also: a bad --slots or another range on the
same run dir is exit 2, and cutover over the running syncs' run dirs is refused (the live cutover takes one).
"""

from __future__ import annotations

import time

import test_sync as base
from aws_helpers import invoke as aws_invoke
from aws_helpers import own_client
from conftest import CLUSTER_PASSWORD, SOURCE_PASSWORD, TARGET_PASSWORD
from migrate.net.keyspace import SlotRanges, key_slot
from reliability import assert_clean_error, spawn
from snapshot import assert_same, snapshot

source = base.source                  # the standalone source, notifications reset around the test
notifying_cluster = base.notifying_cluster  # the 3-master cluster source with notifications on
sync_processes = base.sync_processes  # every sync and app started, killed at the end

LOW, HIGH = "0-8191", "8192-16383"
SECRETS = (SOURCE_PASSWORD, TARGET_PASSWORD, CLUSTER_PASSWORD)
ENDPOINT = "/storefront/test/redis/endpoint"


def in_slots(data: dict, slots: str) -> dict:
    wanted = SlotRanges.parse(slots)
    return {key: value for key, value in data.items() if key_slot(key) in wanted}


def place_foreign_keys(target, count: int = 200) -> dict:
    """Keys on the target that the source never had, in both ranges: each range's own sync must delete them,
    the other must leave them alone."""
    client = target.cluster_client()
    for i in range(count):
        client.set(f"foreign:{i}", f"only-on-target-{i}")
        if i % 4 == 0:
            client.hset(f"foreign:h:{i}", mapping={"a": i})
    return snapshot(target)


def start_sync(started: list, run_dir, source_url: str, target_url: str, slots: str) -> base.Sync:
    sync = base.Sync(run_dir, source_url, target_url, "--slots", slots, "--workers", "2", "--enable-notifications",
                     "--allow-nonempty-target")
    started.append(sync.start())
    return sync


def test_two_syncs_split_by_slots_onto_one_target_are_exact_and_never_touch_the_other_range(
        source, serverless_target, aws, tmp_path, sync_processes):
    client = source.client()
    base.seed(client)
    foreign = place_foreign_keys(serverless_target)
    assert in_slots(foreign, LOW) and in_slots(foreign, HIGH)
    writer = base.start_writer(sync_processes, tmp_path, source.url())
    low_dir, high_dir = tmp_path / "low", tmp_path / "high"

    # the low range alone: its keys follow the source, the high range stays exactly as placed
    low = start_sync(sync_processes, low_dir, source.url(), serverless_target.url(), LOW)
    state = low.following()
    assert state["slots"] == LOW
    base.follow_for(low, writer, 1.0)
    assert in_slots(snapshot(serverless_target), HIGH) == in_slots(foreign, HIGH), "sync 0-8191 touched slots 8192+"

    # FLUSHDB publishes no key events: the gap's reconcile (verify with repair and delete-extra) covers the range
    client.flushdb()
    flushed_at = time.time()
    base.gap_then_reconciled(low, "the flush seen as a gap", "the flush reconciled")
    base.follow_for(low, writer, 0.5)
    assert in_slots(snapshot(serverless_target), HIGH) == in_slots(foreign, HIGH), \
        "the reconcile of 0-8191 wrote or deleted keys in slots 8192+"

    # the high range's own sync: its bulk copy and proof bring the rest
    high = start_sync(sync_processes, high_dir, source.url(), serverless_target.url(), HIGH)
    assert high.following()["slots"] == HIGH
    base.follow_for(high, writer, 1.5)

    # cutover takes the run dirs of a split copy, but its live path (fence, drain, flip) follows one sync only
    ssm = own_client("ssm")
    ssm.put_parameter(Name=ENDPOINT, Value="old-redis", Type="String")
    ssm.put_parameter(Name=ENDPOINT.replace("endpoint", "port"), Value="6379", Type="String")
    refused = aws_invoke("cutover", "--env", "test", "--target", serverless_target.url(), "--run-dir", low_dir,
                         "--run-dir", high_dir, "--dry-run", code=1)
    assert "a sync is following" in refused.output and str(low_dir) in refused.output
    assert ssm.get_parameter(Name=ENDPOINT)["Parameter"]["Value"] == "old-redis"

    records = writer.stop()
    for sync in (low, high):
        code = sync.stop()
        assert code == 0, f"sync exited {code} after SIGTERM\n{sync.output()}"
    records.ops = [op for op in records.ops if op[1] is not None and op[0] - op[1] / 1000 > flushed_at]
    base.assert_exact(source, serverless_target, records)  # the foreign keys are gone too, each by its range's sync
    assert "K" in client.config_get("notify-keyspace-events")["notify-keyspace-events"], \
        "with --slots the first sync to stop must leave the events on for the other ranges' syncs"

    # the run dir copies one range for good; a bad range is refused before anything starts
    outcome = spawn("sync", "--source", source.url(), "--target", serverless_target.url(), "--run-dir", low_dir,
                    "--slots", "0-100", timeout=60)
    assert_clean_error(outcome, 2, "slots", secrets=SECRETS)


def test_a_bad_slot_range_is_exit_2(source, serverless_target, run_dir):
    base.seed(source.client(), keys=50)
    outcome = spawn("sync", "--source", source.url(), "--target", serverless_target.url(), "--run-dir", run_dir,
                    "--enable-notifications", "--slots", "9-3", timeout=60)  # other bad ranges: test_workers.py
    assert_clean_error(outcome, 2, "--slots", secrets=SECRETS)
    assert serverless_target.first.client().dbsize() == 0


def test_a_cluster_sync_listens_only_on_the_primaries_of_its_slots(notifying_cluster, serverless_target, tmp_path,
                                                                   sync_processes):
    """Slots 0-1000 live on one of the three primaries: only that one carries sync's subscription, and the
    target ends with exactly the source's keys of those slots, changes made while following included."""
    client = notifying_cluster.cluster_client()
    base.seed(client, keys=1500)
    owners = client.nodes_manager.slots_cache
    owner = owners[0][0].port
    assert owners[1000][0].port == owner
    sync = base.Sync(tmp_path / "part", notifying_cluster.url(), serverless_target.url(), "--slots", "0-1000",
                     "--workers", "2")
    sync_processes.append(sync.start())
    assert sync.following()["slots"] == "0-1000"
    patterns = {node.port: node.client().execute_command("PUBSUB", "NUMPAT") for node in notifying_cluster.nodes}
    assert patterns[owner] >= 1 and all(count == 0 for port, count in patterns.items() if port != owner), patterns
    for i in range(600):  # on every primary: the range's changes are followed, the others' are not
        client.set(f"later:{i}", i)
        client.delete(f"later:{i // 2}") if i % 3 == 0 else None
    sync.wait(lambda s: s.get("applied", 0) > 0, "changes in the range applied")
    assert sync.stop() == 0, sync.output()
    copied = snapshot(serverless_target)
    assert copied and all(key_slot(key) <= 1000 for key in copied)
    assert_same(in_slots(snapshot(notifying_cluster), "0-1000"), copied)
