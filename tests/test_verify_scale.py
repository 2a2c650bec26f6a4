"""Verify at scale on real servers: the full pass keeps per-slot digests only, and descent re-reads just
the slots that differ, yet every difference is still found and named: a changed value, a changed TTL, a
missing key, an extra key, among many keys. Both sides are written alike by hand-packed pipelines (no
copy needed), so a test spends its time in verify."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from migrate.cli import cli
from migrate.net.endpoints import Endpoint, discover
from migrate.net.keyspace import key_slot
from migrate.net.wire import Wire, pack
from migrate.verify import descent

EXPIRE_AT = 4_102_444_800_000  # 2100-01-01, ms: the same absolute expiry on both sides


def verify(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["verify", *map(str, args), "--json"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def kinds(result) -> dict[bytes, str]:
    return {base64.b64decode(d["key"]): d["kind"] for d in result["first_differences"]}


def write(url: str, commands_for) -> None:
    """Send commands_for(index) of every key index to the master that owns its key, 5,000 at a time."""
    topology = discover(Endpoint.from_url("target", url))
    owners = topology.slot_owners()
    wires = {index: Wire(topology.endpoint, node.host, node.port) for index, node in enumerate(topology.masters)}
    pending: dict[int, list[bytes]] = {index: [] for index in wires}
    try:
        for key, commands in commands_for:
            owner = owners[key_slot(key)]
            pending[owner] += commands
            if len(pending[owner]) >= 5000:
                wires[owner].send(b"".join(pending[owner]))
                wires[owner].read(len(pending[owner]))
                pending[owner] = []
        for owner, commands in pending.items():
            if commands:
                wires[owner].send(b"".join(commands))
                wires[owner].read(len(commands))
    finally:
        for wire in wires.values():
            wire.close()


def keyspace(keys: int):
    """Mostly small strings, some hashes and sets; a third with the same absolute expiry."""
    for index in range(keys):
        key = b"k:%d" % index
        if index % 10 == 7:
            commands = [pack(b"HSET", key, b"a", b"%d" % index, b"b", b"x")]
        elif index % 10 == 8:
            commands = [pack(b"SADD", key, b"m1", b"m%d" % index)]
        else:
            commands = [pack(b"SET", key, b"value-%d" % index)]
        if index % 3 == 0:
            commands.append(pack(b"PEXPIREAT", key, b"%d" % EXPIRE_AT))
        yield key, commands


def same_data(source_url: str, target_url: str, keys: int) -> None:
    write(source_url, keyspace(keys))
    write(target_url, keyspace(keys))


def tamper(target_url: str) -> dict[bytes, str]:
    """One key of each kind of difference, in four different slots."""
    write(target_url, [(b"k:11", [pack(b"SET", b"k:11", b"changed")]),
                       (b"k:12", [pack(b"PEXPIREAT", b"k:12", b"%d" % (EXPIRE_AT + 3_600_000))]),
                       (b"k:13", [pack(b"DEL", b"k:13")]),
                       (b"only-on-target", [pack(b"SET", b"only-on-target", b"x")])])
    return {b"k:11": "value", b"k:12": "ttl", b"k:13": "missing", b"only-on-target": "extra"}


def check_descent(source_url: str, target_url: str, keys: int) -> None:
    same_data(source_url, target_url, keys)
    args = ("--source", source_url, "--target", target_url)
    write(target_url, [(b"k:4242", [pack(b"SET", b"k:4242", b"value-4242!")])])  # a single changed key
    code, result = verify(*args)
    assert code == 1 and kinds(result) == {b"k:4242": "value"}, result
    assert result["counts"]["slots_compared_by_key"] == 1
    assert result["counts"]["source"]["keys"] == result["counts"]["target"]["keys"] == keys

    expected = {**tamper(target_url), b"k:4242": "value"}
    code, result = verify(*args)
    assert code == 1 and kinds(result) == expected, result
    assert result["counts"]["slots_compared_by_key"] == 5
    assert result["counts"]["target"]["keys"] == keys  # one missing, one extra

    code, result = verify(*args, "--repair", "--delete-extra")  # the repaired keys are read again after
    assert code == 0 and result["repaired"]["found"] == 5 and result["repaired"]["deleted"] == 1, result


def test_descent_names_each_difference_among_100k_keys_standalone_to_cluster(standalone_source, cluster_target):
    check_descent(standalone_source.url(), cluster_target.url(), 100_000)  # 1M: the slow test below


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 1M keys written twice and verified three times: minutes on a shared machine
def test_descent_names_each_difference_among_1m_keys_standalone_to_cluster(standalone_source, cluster_target):
    check_descent(standalone_source.url(), cluster_target.url(), 1_000_000)


def test_descent_cluster_source_to_serverless_like_target(cluster_source, serverless_target):
    check_descent(cluster_source.url(), serverless_target.url(), 60_000)


def test_many_differing_slots_are_read_in_bounded_groups(standalone_source, serverless_target, monkeypatch):
    """An empty target differs in every slot: a standalone source is then scanned once per group of
    slots, and every key is still named."""
    monkeypatch.setattr(descent, "GROUP_KEYS", 700)
    write(standalone_source.url(), keyspace(5000))
    write(serverless_target.url(), [(b"extra:%d" % n, [pack(b"SET", b"extra:%d" % n, b"x")]) for n in range(30)])
    code, result = verify("--source", standalone_source.url(), "--target", serverless_target.url(), "--rounds", 1)
    assert code == 1 and result["differences"] == 5030 and result["kinds"] == {"missing": 5000, "extra": 30}
    assert result["counts"]["source"]["keys"] == 5000 and result["counts"]["target"]["keys"] == 30
    groups = list(descent.groups(list(range(16384)), [_digests_of(5000)], limit=700))
    assert len(groups) > 7 and sorted(slot for group in groups for slot in group) == list(range(16384))


def _digests_of(keys: int):
    from migrate.verify.slotdigest import SlotDigests
    digests = SlotDigests()
    for key, _ in keyspace(keys):
        digests.add(key_slot(key), key, 1, 0, -1, 1)
    return digests


class _SlotGrowsAfterCount(Wire):
    """A real connection to the node; once the COUNTKEYSINSLOT replies are in, another client writes 50
    new keys into the slot, as sync's follower writes the target while a reconcile lists it."""

    def __init__(self, topology, node, writes) -> None:
        self.writes: list[str] = []  # none while the connection is set up (AUTH, HELLO)
        super().__init__(topology.endpoint, node.host, node.port)
        self.writes = writes

    def read(self, count):
        replies = super().read(count)
        if self.writes:
            write(self.writes.pop(), [(b"{slot}:new:%d" % n, [pack(b"SET", b"{slot}:new:%d" % n, b"x")])
                                      for n in range(50)])
        return replies


def test_descent_names_a_slots_old_keys_though_the_slot_grows_while_it_is_listed(serverless_target):
    """GETKEYSINSLOT returns at most the count asked: sized by COUNTKEYSINSLOT alone, a slot that grew in
    between lost names, and a target-only key there (after a FLUSHDB on the source) was never deleted."""
    url = serverless_target.url()
    write(url, [(b"{slot}:old", [pack(b"SET", b"{slot}:old", b"x")])])
    topology = discover(Endpoint.from_url("target", url))
    lister = descent.SlotLister(topology)
    wire = _SlotGrowsAfterCount(topology, topology.masters[0], [url])
    try:
        named = lister._in_slots(wire, [key_slot(b"{slot}:old")])
    finally:
        wire.close()
        lister.close()
    assert named is not None and set(named) == {b"{slot}:old"} | {b"{slot}:new:%d" % n for n in range(50)}
