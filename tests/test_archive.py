"""archive to S3 (moto's server over HTTP), then replay and verify from it with the run dir gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from aws_helpers import invoke, own_client
from snapshot import assert_same, snapshot

BUCKET = "redis-archive-test"
URI = f"s3://{BUCKET}/prod/2026-12-03"


@pytest.fixture
def bucket(aws):
    s3 = own_client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    return s3


@pytest.fixture(scope="module")
def _dumped_once(_standalone_source, tmp_path_factory):
    """A source with every type, TTLs and a big list (struct records), dumped into small segments, once for the
    module: the run dir as the dump left it, and the source's snapshot (the source is flushed by later tests)."""
    _standalone_source.flush()
    client = _standalone_source.client()
    client.mset({f"k:{i}": f"v{i}" * 3 for i in range(4000)})
    pipe = client.pipeline(transaction=False)
    for i in range(200):
        pipe.hset(f"h:{i}", mapping={"a": i, "b": "x"})
        pipe.sadd(f"s:{i}", "m1", "m2", i)
        pipe.zadd(f"z:{i}", {"a": 1.5, "b": i})
        pipe.rpush(f"l:{i}", "x", "y", i)
        pipe.set(f"t:{i}", "ttl", px=3_600_000)
    pipe.execute()
    client.rpush("biglist", *[f"item-{i}" for i in range(30_000)])
    run_dir = tmp_path_factory.mktemp("archive-dumped") / "run"
    invoke("dump", "--source", _standalone_source.url(), "--run-dir", run_dir, "--segment-records", 100)
    return run_dir, snapshot(_standalone_source)


@pytest.fixture
def dumped(_dumped_once, run_dir):
    """That dump, copied into this test's run dir (tests change it); the source's snapshot."""
    template, data = _dumped_once
    shutil.copytree(template, run_dir)
    return data


def segment_objects(s3) -> list[str]:
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    return sorted(k for k in keys if "/segments/" in k)


def test_archive_then_replay_from_s3_into_an_empty_target_equals_the_source(dumped, bucket, run_dir,
                                                                            serverless_target, tmp_path):
    result = invoke("archive", "--run-dir", run_dir, "--to", URI)
    segments = sorted(p.name for p in (run_dir / "segments").iterdir())
    assert f"{URI}/manifest.json" in result.output
    objects = segment_objects(bucket)
    assert [k.rsplit("/", 1)[1].split(".seg.")[0] + ".seg" for k in objects] == segments
    head = bucket.head_object(Bucket=BUCKET, Key=objects[0])
    assert head["ServerSideEncryption"] == "AES256" and head.get("Metadata", {}) == {}
    again = invoke("archive", "--run-dir", run_dir, "--to", URI, "--json")
    assert '"uploaded": 0' in again.output and segment_objects(bucket) == objects

    shutil.rmtree(run_dir)
    replay_dir = tmp_path / "replay-progress"
    invoke("replay", "--from", URI, "--target", serverless_target.url(), "--run-dir", replay_dir)
    assert sorted(p.name for p in replay_dir.iterdir() if not p.name.startswith(".")) == [
        "lock", "replay.json", "run.json", "segments"]
    assert not any((replay_dir / "segments").iterdir())
    assert_same(dumped, snapshot(serverless_target))
    invoke("verify", "--against-dump", "--from", URI, "--target", serverless_target.url())
    invoke("replay", "--from", URI, "--target", serverless_target.url(), "--run-dir", replay_dir)  # done: resumes
    other = invoke("replay", "--from", f"s3://{BUCKET}/elsewhere", "--target", serverless_target.url(),
                   "--run-dir", replay_dir, code=2)
    assert "elsewhere/manifest.json" in other.output and "missing" in other.output


def test_a_flipped_byte_in_one_object_is_refused_by_replay_and_verify(dumped, bucket, run_dir,
                                                                     serverless_target, tmp_path):
    invoke("archive", "--run-dir", run_dir, "--to", URI)
    victim = segment_objects(bucket)[2]
    data = bytearray(bucket.get_object(Bucket=BUCKET, Key=victim)["Body"].read())
    data[len(data) // 2] ^= 0x01
    bucket.put_object(Bucket=BUCKET, Key=victim, Body=bytes(data))

    replayed = invoke("replay", "--from", URI, "--target", serverless_target.url(), "--run-dir",
                      tmp_path / "progress", code=2)
    assert victim in replayed.output and "corrupt" in replayed.output
    # the segments before it were written, none of the corrupt one's keys
    checked = invoke("verify", "--against-dump", "--from", URI, "--target", serverless_target.url(), code=2)
    assert victim in checked.output
    repaired = invoke("archive", "--run-dir", run_dir, "--to", URI, "--json")  # the run dir still exists: it repairs
    assert '"uploaded": 1' in repaired.output

    bucket.delete_object(Bucket=BUCKET, Key=victim)
    missing = invoke("replay", "--from", URI, "--target", serverless_target.url(), "--run-dir",
                     tmp_path / "progress", code=2)
    assert victim in missing.output and "missing" in missing.output


def test_kill_9_mid_archive_then_rerun_completes_without_duplicates(dumped, bucket, run_dir, aws):
    segments = sorted(p.name for p in (run_dir / "segments").iterdir())
    env = {**os.environ, **aws.env()}
    command = [sys.executable, "-c", "from migrate.cli import main; main()", "archive", "--run-dir", str(run_dir),
               "--to", URI]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not segment_objects(bucket) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    stderr = child.communicate()[1].decode(errors="replace")
    partial = segment_objects(bucket)
    assert 0 < len(partial) < len(segments), f"the kill came too late to test a resume: {len(partial)} of " \
                                             f"{len(segments)}, exit {child.returncode}: {stderr[-500:]}"
    assert "manifest.json" not in str(bucket.list_objects_v2(Bucket=BUCKET).get("Contents"))

    result = invoke("archive", "--run-dir", run_dir, "--to", URI, "--json")
    assert f'"already_there": {len(partial)}' in result.output
    objects = segment_objects(bucket)
    names = [k.rsplit("/", 1)[1].split(".seg.")[0] + ".seg" for k in objects]
    assert names == segments  # each segment once: no duplicate, none missing
    assert not bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_multipart_segments_are_verified_from_s3(standalone_source, bucket, run_dir, serverless_target, tmp_path,
                                                monkeypatch):
    from migrate.cloud import archive as archiving
    monkeypatch.setattr(archiving, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(archiving, "PART_SIZE", 5 * 1024 * 1024)  # S3's minimum part
    standalone_source.client().set("blob", os.urandom(7 * 1024 * 1024))  # incompressible: a 7 MiB segment
    standalone_source.client().set("small", "x")
    invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir)
    assert max(p.stat().st_size for p in (run_dir / "segments").iterdir()) > 5 * 1024 * 1024
    invoke("archive", "--run-dir", run_dir, "--to", URI, "--kms-key", "alias/redis-archive")
    assert invoke("archive", "--run-dir", run_dir, "--to", URI, "--json").output.count('"uploaded": 0')
    for key in segment_objects(bucket):
        head = bucket.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and "redis-archive" in head["SSEKMSKeyId"]
    invoke("replay", "--from", URI, "--target", serverless_target.url(), "--run-dir", tmp_path / "p")
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def test_a_bucket_that_may_be_public_is_refused_unless_forced(dumped, bucket, run_dir):
    bucket.delete_public_access_block(Bucket=BUCKET)
    refused = invoke("archive", "--run-dir", run_dir, "--to", URI, code=1)
    assert "public access" in refused.output and not segment_objects(bucket)
    bucket.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False, "RestrictPublicBuckets": True})
    assert "BlockPublicPolicy" in invoke("archive", "--run-dir", run_dir, "--to", URI, code=1).output
    invoke("archive", "--run-dir", run_dir, "--to", URI, "--force")
    assert segment_objects(bucket)


def test_bad_uris_and_a_missing_bucket_are_bad_input(dumped, bucket, run_dir, serverless_target, tmp_path):
    assert "s3://BUCKET/PREFIX" in invoke("archive", "--run-dir", run_dir, "--to", "https://x/y", code=2).output
    assert "prefix" in invoke("archive", "--run-dir", run_dir, "--to", f"s3://{BUCKET}", code=2).output
    missing = invoke("archive", "--run-dir", run_dir, "--to", "s3://no-such-bucket-here/x", code=2).output
    assert "no-such-bucket-here" in missing and "hint" in missing
    nothing = invoke("replay", "--from", f"s3://{BUCKET}/nothing", "--target", serverless_target.url(),
                     "--run-dir", tmp_path / "p", code=2).output
    assert f"s3://{BUCKET}/nothing/manifest.json" in nothing
    mixed = invoke("replay", "--from", URI, "--target", serverless_target.url(), "--run-dir", run_dir, code=2)
    assert "manifest.json" in mixed.output  # no archive yet: named before the run dir's dump is looked at
    invoke("archive", "--run-dir", run_dir, "--to", URI)
    own_dump = invoke("replay", "--from", URI, "--target", serverless_target.url(), "--run-dir", run_dir, code=2)
    assert "holds a dump of its own" in own_dump.output
    assert "archive" not in (run_dir / "run.json").read_text()  # refused before anything in it changed
