"""Hash fields with their own TTLs (Valkey 9 HSETEX/HEXPIRE, Redis 7.4+ HEXPIRE): carried with HPEXPIREAT where
the target has field TTLs, and otherwise skipped as unsupported, named and counted (exit 2 unless
--skip-unsupported), never copied without their expiries. Checked under the independent snapshot, which reads
every field's expiry (HPEXPIRETIME) on servers that have them."""

from __future__ import annotations

import base64
import json
import time

from reliability import assert_clean_error, invoke
from snapshot import assert_same, snapshot

BIG = 2500  # past a struct chunk (1,000 fields): the expiring field sits in a later chunk than the first


def seed(client) -> dict[bytes, str]:
    """Plain and expiring hashes, small and big, with and without a key TTL; returns what each one is."""
    soon = int(time.time() * 1000) + 3_600_000
    client.hset(b"h:plain", mapping={"a": "1", "b": "2"})
    client.hset(b"h:small", mapping={"a": "1", "b": "2", "c": "3"})
    client.execute_command("HEXPIRE", b"h:small", 3600, "FIELDS", 1, "a")
    client.execute_command("HPEXPIREAT", b"h:small", soon + 7, "FIELDS", 1, "b")
    client.execute_command("HSETEX", b"h:hsetex", "EX", 600, "FIELDS", 2, "x", "1", "y", "2")
    client.hset(b"h:keyttl", mapping={"a": "1", "b": "2"})
    client.execute_command("HEXPIRE", b"h:keyttl", 1800, "FIELDS", 1, "b")
    client.pexpire(b"h:keyttl", 7_200_000)
    client.hset(b"h:big", mapping={f"f{n}": f"v{n}" for n in range(BIG)})
    client.execute_command("HEXPIRE", b"h:big", 900, "FIELDS", 2, f"f{BIG - 1}", "f7")
    client.set(b"s:plain", b"v")
    return {b"h:plain": "plain", b"h:small": "ttl", b"h:hsetex": "ttl", b"h:keyttl": "ttl", b"h:big": "ttl",
            b"s:plain": "plain"}


def run(source, target, run_dir, *extra):
    return invoke("run", "--source", source.url(), "--target", target.url(), "--run-dir", run_dir, "--json", *extra)


def test_field_ttls_are_carried_type_by_type_where_the_target_has_them(valkey_source, valkey9_target, run_dir):
    keys = seed(valkey_source.client())
    outcome = run(valkey_source, valkey9_target, run_dir, "--mode", "struct")
    assert outcome.exit_code == 0, str(outcome)
    summary = json.loads(outcome.stdout)
    assert (summary["struct_written"], summary["skipped"]) == (len(keys), {}), summary
    expected = snapshot(valkey_source)
    assert {key for key, (_, value, _) in expected.items() if isinstance(value, tuple)} == {
        key for key, what in keys.items() if what == "ttl"}
    assert_same(expected, snapshot(valkey9_target))


def test_field_ttls_restore_as_they_are_into_the_same_engine(valkey_source, valkey9_target, run_dir):
    keys = seed(valkey_source.client())
    outcome = run(valkey_source, valkey9_target, run_dir)
    assert outcome.exit_code == 0, str(outcome)
    assert json.loads(outcome.stdout)["restored"] == len(keys)
    assert_same(snapshot(valkey_source), snapshot(valkey9_target))


def test_field_ttls_are_skipped_by_name_into_valkey_8(valkey_source, valkey_target, run_dir):
    """Valkey 8.1 has no field TTLs: each such hash is skipped, named and counted, and nothing of it is left on
    the target (the big one's first chunk, which has no expiring field, was written before its later chunk
    showed one: it is deleted). Without --skip-unsupported that is exit 2."""
    keys = seed(valkey_source.client())
    expiring = sorted(key for key, what in keys.items() if what == "ttl")
    refused = run(valkey_source, valkey_target, run_dir)
    assert_clean_error(refused, 2, f"{len(expiring)} keys could not be migrated", "hash field TTLs",
                       "--skip-unsupported")
    plain = {key for key, what in keys.items() if what == "plain"}
    assert set(snapshot(valkey_target)) == plain  # copied, and the rest left out, before the refusal
    accepted = run(valkey_source, valkey_target, run_dir, "--skip-unsupported")  # the same run, accepted
    assert accepted.exit_code == 0, str(accepted)
    summary = json.loads(accepted.stdout)
    assert sum(summary["skipped"].values()) == len(expiring), summary
    assert sorted(item["key"] for item in summary["skipped_keys"]) == [k.decode() for k in expiring], summary
    copied = snapshot(valkey_target)
    assert set(copied) == plain
    assert copied[b"h:plain"][1] == [(b"a", b"1"), (b"b", b"2")]


def test_verify_names_a_hash_whose_field_ttls_differ(valkey_source, valkey9_target, run_dir):
    seed(valkey_source.client())
    assert run(valkey_source, valkey9_target, run_dir, "--mode", "struct").exit_code == 0
    valkey9_target.first.client().execute_command("HEXPIRE", b"h:small", 99, "FIELDS", 1, "c")
    outcome = invoke("verify", "--source", valkey_source.url(), "--target", valkey9_target.url(), "--json")
    assert outcome.exit_code == 1, str(outcome)
    result = json.loads(outcome.stdout)
    assert [base64.b64decode(d["key"]) for d in result["first_differences"]] == [b"h:small"], result
