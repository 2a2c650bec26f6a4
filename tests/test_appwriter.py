"""The tests' app (tests/appwriter.py) on real servers: it writes every shape it claims, records every reply,
stops cleanly on SIGTERM, finds its Redis through SSM as the storefront does, and its checker catches a lost
write. The sync and cutover tests rely on all of this."""

from __future__ import annotations

import os
import signal
import time

import boto3
import pytest

from appwriter import MIX, AppWriter, expected_witnesses, latency, longest_stall, missing_witnesses, read_records
from conftest import TARGET_PASSWORD
from snapshot import assert_same_groups, stream_groups

RECORDED_OPS = {"set", "setex", "setpx", "expire", "persist", "del", "rename", "incr", "setnx", "hset", "rpush",
                "ltrim", "zincrby", "xadd", "xreadgroup", "xack", "xgroup", "pfadd", "pfcount"}


def run_for(writer: AppWriter, seconds: float):
    writer.start()
    time.sleep(seconds)
    return writer.stop()


def test_records_every_reply_and_every_witness_is_on_the_server(standalone_source, tmp_path):
    records = run_for(AppWriter(tmp_path / "w.jsonl", url=standalone_source.url(), rate=2000), 3)
    summary = records.summary
    print(f"\nappwriter: {summary['rate']} ops/s, batch latency {summary['batch_latency_ms']}, "
          f"longest stall {summary['longest_stall_ms']} ms")
    assert summary["acked"] == len(records.acked()) == len(records.ops) > 1000
    assert summary["unknown"] == summary["errors"] == 0
    assert {op[2] for op in records.ops} == RECORDED_OPS
    assert len(records.witnesses()) > 100
    assert missing_witnesses(records, standalone_source) == []
    assert longest_stall(records)[0] * 1000 == pytest.approx(summary["longest_stall_ms"], abs=0.2)
    assert latency(records)["max"] >= latency(records)["p50"] > 0
    assert records.header["cluster"] is False and records.header["endpoint"].endswith(str(standalone_source.port))


def test_a_lost_or_changed_witness_is_reported(standalone_source, tmp_path):
    records = run_for(AppWriter(tmp_path / "w.jsonl", url=standalone_source.url(), rate=1000,
                                extra=("--witness-only",)), 1)
    keys = sorted(expected_witnesses(records))
    client = standalone_source.client()
    client.delete(keys[0])
    client.set(keys[1], "someone else's value")
    assert missing_witnesses(records, standalone_source) == sorted(keys[:2])


def test_cycling_witnesses_accept_the_last_acknowledged_value(standalone_source, tmp_path):
    records = run_for(AppWriter(tmp_path / "w.jsonl", url=standalone_source.url(), rate=1000,
                                extra=("--witness-only", "--witness-space", "10")), 1)
    expected = expected_witnesses(records)
    assert len(expected) == 10 and all(len(values) == 1 for values in expected.values())
    assert missing_witnesses(records, standalone_source) == []


def test_sigterm_mid_run_flushes_the_record(standalone_source, tmp_path):
    writer = AppWriter(tmp_path / "w.jsonl", url=standalone_source.url(), rate=3000).start()
    writer.wait_acks(2000)
    os.kill(writer.process.pid, signal.SIGTERM)
    assert writer.process.wait(15) == 0
    records = read_records(writer.out)
    assert records.summary["acked"] == len(records.ops) >= 2000
    assert missing_witnesses(records, standalone_source) == []


def test_against_the_cluster_source(cluster_source, tmp_path):
    records = run_for(AppWriter(tmp_path / "w.jsonl", url=cluster_source.url(), rate=2000), 2)
    assert records.header["cluster"] is True
    assert records.summary["errors"] == 0, records.ops[:5]
    assert missing_witnesses(records, cluster_source) == []
    assert stream_groups(cluster_source), "the writer's streams have consumer groups"


def test_finds_its_redis_through_ssm_at_start(aws, serverless_target, certs, tmp_path):
    """Like a storefront task: endpoint and port from SSM, TLS and the password from its own configuration."""
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/storefront/apptest/redis/endpoint", Value="127.0.0.1", Type="String")
    ssm.put_parameter(Name="/storefront/apptest/redis/port", Value=str(serverless_target.first.port), Type="String")
    records = run_for(AppWriter(tmp_path / "w.jsonl", ssm_env="apptest", password=TARGET_PASSWORD,
                                tls_ca=certs.ca, rate=1000), 1.5)
    assert records.header["endpoint"] == f"127.0.0.1:{serverless_target.first.port}"
    assert records.header["ssm_versions"] == {"endpoint": 1, "port": 1}
    assert records.summary["errors"] == 0
    assert missing_witnesses(records, serverless_target) == []


def test_stream_groups_see_what_xack_changes(standalone_source, tmp_path):
    run_for(AppWriter(tmp_path / "w.jsonl", url=standalone_source.url(), rate=2000), 1.5)
    before = stream_groups(standalone_source)
    key, groups = next((k, g) for k, g in sorted(before.items()) if any(group[4] for group in g))
    group = next(group for group in groups if group[4])
    standalone_source.client().xack(key, group[0], group[4][0][0])
    with pytest.raises(AssertionError, match="consumers|pending"):
        assert_same_groups(before, stream_groups(standalone_source))


def test_the_mix_names_only_ops_it_implements():
    from appwriter import Workload

    workload = Workload("x")
    assert all(callable(getattr(workload, f"_{op}")) for op in MIX)
