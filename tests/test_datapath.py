"""Data path on real servers: dump + replay copy every key, value and TTL exactly, and resume after kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import seed_data
from migrate.cli import cli
from snapshot import assert_same, snapshot


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return result


def run_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_standalone_to_serverless_is_exact(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 3000, seed=7, short_ttl_keys=0)
    before = snapshot(standalone_source)
    summary = run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                       "--run-dir", run_dir)
    accounted = summary["restored"] + summary["struct_written"] + summary["expired"] + summary["vanished"]
    assert accounted == len(before), summary
    assert_same(snapshot(standalone_source), snapshot(serverless_target))
    assert summary["skipped"] == {}


def test_cluster_to_cluster_is_exact(cluster_source, cluster_target, run_dir):
    seed_data.seed(cluster_source.cluster_client(), 3000, seed=3)
    summary = run_json("run", "--source", cluster_source.url(), "--target", cluster_target.url(),
                       "--run-dir", run_dir)
    assert summary["dump_done"] and summary["replay_done"]
    assert_same(snapshot(cluster_source), snapshot(cluster_target))
