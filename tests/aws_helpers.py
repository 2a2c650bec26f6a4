"""Shared by the plan and cutover tests: a recorder of the AWS actions performed, and the serverless stub.

moto 5.2.5 answers DescribeServerlessCaches with HTTP 500, so that one call goes through botocore's Stubber
on a real client (which validates request and response against the service model). SSM and ECS go to moto.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner

from conftest import CLUSTER_PASSWORD, SOURCE_PASSWORD, TARGET_PASSWORD
from migrate.cli import cli
from migrate.cloud.aws import IAM_ACTIONS

RUNBOOK = Path(__file__).resolve().parent.parent / "RUNBOOK.md"
PASSWORDS = (SOURCE_PASSWORD, CLUSTER_PASSWORD, TARGET_PASSWORD)


@pytest.fixture
def aws_calls(monkeypatch) -> set[str]:
    """Every AWS action the code under test performs, as IAM names; each must be one RUNBOOK.md lists."""
    calls: set[str] = set()
    session = boto3.session.Session()
    session.events.register("before-parameter-build",
                            lambda model, **_: calls.add(f"{model.service_model.signing_name}:{model.name}"))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    yield calls
    assert calls <= set(IAM_ACTIONS), f"actions missing from IAM_ACTIONS/RUNBOOK.md: {calls - set(IAM_ACTIONS)}"


def own_client(service: str):
    """A client for the test's own setup and assertions, outside the recorded session."""
    return boto3.session.Session().client(service)


def runbook_actions() -> set[str]:
    """The actions in the code block under RUNBOOK.md's '## IAM permissions'."""
    text = RUNBOOK.read_text()
    section = text.split("## IAM permissions", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return set(re.findall(r"[a-z0-9-]+:[A-Za-z]+", block))


def cache_response(name: str, host: str, port: int, *, storage_gb: int = 5, ecpu_max: int = 10_000,
                   ecpu_min: int = 1_000, status: str = "available") -> dict:
    return {"ServerlessCaches": [{
        "ServerlessCacheName": name, "Status": status, "Engine": "valkey", "MajorEngineVersion": "8",
        "FullEngineVersion": "8.0", "ARN": f"arn:aws:elasticache:us-east-1:123456789012:serverlesscache:{name}",
        "CacheUsageLimits": {"DataStorage": {"Maximum": storage_gb, "Unit": "GB"},
                             "ECPUPerSecond": {"Maximum": ecpu_max, "Minimum": ecpu_min}},
        "Endpoint": {"Address": host, "Port": port}, "ReaderEndpoint": {"Address": host, "Port": port + 1},
    }]}


def stubbed_elasticache(response: dict, name: str, times: int = 1):
    """A real elasticache client whose transport is the Stubber, answering describe_serverless_caches."""
    client = boto3.client("elasticache")
    stubber = Stubber(client)
    for _ in range(times):
        stubber.add_response("describe_serverless_caches", response, {"ServerlessCacheName": name})
    stubber.activate()
    return client


def invoke(*args: str, obj=None, code: int | None = 0):
    """Run the CLI; check the exit code and that no password was printed."""
    result = CliRunner().invoke(cli, [str(a) for a in args], obj=obj)
    output = result.output
    assert not any(p in output for p in PASSWORDS), output
    assert "Traceback" not in output, output
    if code is not None:
        assert result.exit_code == code, f"exit {result.exit_code}:\n{output}"
    return result


def as_json(result) -> dict:
    return json.loads(result.stdout)
