"""cutover and rollback against moto's SSM and ECS, gated by the run dir's verify.json.

Outcomes are read back from SSM (values, versions, labels) and ECS (deployments), never from the code.
"""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from aws_helpers import as_json, aws_calls, cache_response, invoke, own_client, stubbed_elasticache  # noqa: F401
from migrate.cloud.aws import Clients
from migrate.rundir import RunDir, VerifyLedger

ENV = "test"
ENDPOINT = f"/storefront/{ENV}/redis/endpoint"
PORT = f"/storefront/{ENV}/redis/port"
OLD = {"endpoint": "old-redis.storefront.internal", "port": "6379"}


@pytest.fixture
def ssm(aws, aws_calls):
    """moto's SSM with the seed's two parameters, pointing at the old Redis."""
    client = own_client("ssm")
    client.put_parameter(Name=ENDPOINT, Value=OLD["endpoint"], Type="String")
    client.put_parameter(Name=PORT, Value=OLD["port"], Type="String")
    return client


@pytest.fixture
def target(serverless_target) -> dict:
    """The serverless-like TLS node: its URL (with a password, which must never be printed) and host/port."""
    return {"url": serverless_target.url(), "endpoint": "127.0.0.1", "port": str(serverless_target.first.port)}


def write_verify(run_dir, target_url: str, *, age: float = 60, **fields) -> RunDir:
    rd = RunDir(run_dir, create=True)
    VerifyLedger(rd).record({"finished_at": time.time() - age, "equal": True, "differences": 0, "sample": None,
                             "source": "redis://:***@127.0.0.1:1/0", "target": target_url, **fields})
    return rd


def history(ssm, name: str) -> list[tuple[int, str, set[str]]]:
    return [(p["Version"], p["Value"], set(p.get("Labels", [])))
            for p in ssm.get_parameter_history(Name=name, MaxResults=50)["Parameters"]]


def values(ssm) -> dict[str, str]:
    return {key: ssm.get_parameter(Name=name)["Parameter"]["Value"]
            for key, name in (("endpoint", ENDPOINT), ("port", PORT))}


def snapshot(ssm) -> tuple:
    return history(ssm, ENDPOINT), history(ssm, PORT)


def cutover(target, run_dir=None, *extra, code=0, obj=None):
    args = ["cutover", "--env", ENV, "--target", target["url"], *extra]
    if run_dir is not None:
        args += ["--run-dir", run_dir]
    return invoke(*args, obj=obj, code=code)


def rollback(run_dir=None, *extra, code=0, obj=None):
    args = ["rollback", "--env", ENV, *extra]
    if run_dir is not None:
        args += ["--run-dir", run_dir]
    return invoke(*args, obj=obj, code=code)


# --- the gate -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, fields, message", [
    ("stale", {"age": 2 * 3600}, "old (limit 30m)"),
    ("failed", {"equal": False, "differences": 3}, "found 3 differences"),
    ("sampled", {"sample": 1000}, "a sample of 1000 keys"),
    ("other target", {"target": "rediss://10.0.0.9:6379/0"}, "checked 10.0.0.9:6379"),
])
def test_gate_refuses_a_verify_that_does_not_pass(ssm, target, run_dir, case, fields, message):
    write_verify(run_dir, target["url"], **fields)
    before = snapshot(ssm)
    result = cutover(target, run_dir, code=1)
    assert message in result.stderr and "hint:" in result.stderr
    assert snapshot(ssm) == before
    assert RunDir(run_dir).read("cutover") is None


def test_gate_refuses_without_verify_or_run_dir_and_force_overrides(ssm, target, run_dir):
    RunDir(run_dir, create=True)
    before = snapshot(ssm)
    assert "no verify in" in cutover(target, run_dir, code=1).stderr
    assert "no --run-dir" in cutover(target, None, code=1).stderr
    assert snapshot(ssm) == before
    out = as_json(cutover(target, run_dir, "--force", "--json"))
    assert out["gate"] == "forced"
    assert values(ssm) == {"endpoint": target["endpoint"], "port": target["port"]}


def test_max_verify_age_is_honoured_and_validated(ssm, target, run_dir):
    write_verify(run_dir, target["url"], age=50 * 60)
    cutover(target, run_dir, "--max-verify-age", "45m", code=1)
    assert "not understood" in cutover(target, run_dir, "--max-verify-age", "soon", code=2).stderr
    cutover(target, run_dir, "--max-verify-age", "1h")
    assert values(ssm)["endpoint"] == target["endpoint"]


# --- dry run --------------------------------------------------------------------------------------------

def test_dry_run_writes_nothing_and_shows_the_plan(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    before = snapshot(ssm)
    text = cutover(target, run_dir, "--dry-run").output
    assert "DRY RUN" in text and OLD["endpoint"] in text and target["endpoint"] in text and "would go ahead" in text
    assert snapshot(ssm) == before
    assert RunDir(run_dir).read("cutover") is None


def test_dry_run_of_a_refused_cutover_shows_the_verdict_and_exits_1(ssm, target, run_dir):
    write_verify(run_dir, target["url"], age=3600)
    before = snapshot(ssm)
    out = as_json(cutover(target, run_dir, "--dry-run", "--json", code=1))
    assert out["gate"] == "refused" and out["refused"] and "would be refused" in out["outcome"]
    assert [row["after"] for row in out["parameters"]] == [target["endpoint"], target["port"]]
    assert snapshot(ssm) == before


def test_a_locked_run_dir_refuses_a_live_cutover_and_rollback_but_not_a_dry_run(ssm, target, run_dir):
    """Another command working on the run dir holds its lock: a switch that would write waits for it."""
    directory = write_verify(run_dir, target["url"])
    before = snapshot(ssm)
    with directory.lock():
        for result in (cutover(target, run_dir, code=2), rollback(run_dir, code=2)):
            assert "is locked by pid" in result.output and "wait for that run" in result.output
        assert "would go ahead" in cutover(target, run_dir, "--dry-run").output
    assert snapshot(ssm) == before
    assert directory.read("cutover") is None


# --- cutover and rollback --------------------------------------------------------------------------------

def test_cutover_records_labels_and_reads_back_then_rollback_restores_from_the_run_dir(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    out = as_json(cutover(target, run_dir, "--json"))
    assert out["gate"] == "pass"
    assert values(ssm) == {"endpoint": target["endpoint"], "port": target["port"]}
    run_label = f"cutover-{out['run_id']}"
    assert history(ssm, ENDPOINT) == [(1, OLD["endpoint"], {"pre-cutover"}),
                                      (2, target["endpoint"], {"cutover", run_label})]
    record = RunDir(run_dir).read("cutover")
    assert record["before"] == {"endpoint": {"value": OLD["endpoint"], "version": 1},
                                "port": {"value": OLD["port"], "version": 1}}
    assert record["state"] == "cut-over"

    dry = snapshot(ssm)
    assert "would go ahead" in rollback(run_dir, "--dry-run").output
    assert snapshot(ssm) == dry
    out = as_json(rollback(run_dir, "--json"))
    assert out["restored_from"] == "run dir cutover.json"
    assert values(ssm) == OLD
    assert [v[:2] for v in history(ssm, ENDPOINT)] == [(1, OLD["endpoint"]), (2, target["endpoint"]),
                                                        (3, OLD["endpoint"])]
    assert RunDir(run_dir).read("cutover")["state"] == "rolled-back"
    assert "nothing to change" in rollback(run_dir).output
    assert len(history(ssm, ENDPOINT)) == 3


def test_rollback_without_the_run_dir_uses_the_ssm_labels(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    cutover(target, run_dir)
    out = as_json(rollback(None, "--json"))
    assert out["restored_from"] == "SSM labels pre-cutover/cutover"
    assert values(ssm) == OLD


def test_a_second_cutover_after_a_rollback_labels_the_rolled_back_versions(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    cutover(target, run_dir)
    rollback(run_dir)
    cutover(target, run_dir)
    labels = [(value, {label.split("-")[0] for label in found}) for _, value, found in history(ssm, ENDPOINT)]
    assert labels == [(OLD["endpoint"], set()), (target["endpoint"], {"cutover"}),
                      (OLD["endpoint"], {"rollback", "pre"}), (target["endpoint"], {"cutover"})]
    rollback(None)  # from the labels: back to what the second cutover replaced
    assert values(ssm) == OLD


def test_rerun_after_success_changes_nothing(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    cutover(target, run_dir)
    after = snapshot(ssm)
    record = RunDir(run_dir).read("cutover")
    text = cutover(target, run_dir).output
    assert "nothing to change" in text
    assert snapshot(ssm) == after
    assert RunDir(run_dir).read("cutover") == record


def test_cutover_to_a_serverless_cache_uses_its_endpoint(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    cache = stubbed_elasticache(cache_response("storefront-test", "127.0.0.1", int(target["port"])), "storefront-test")
    invoke("cutover", "--env", ENV, "--serverless-cache", "storefront-test", "--run-dir", run_dir,
           obj=Clients(elasticache=cache))
    assert values(ssm) == {"endpoint": "127.0.0.1", "port": target["port"]}


def test_an_unchanged_port_is_labelled_but_not_rewritten(ssm, target, run_dir):
    ssm.put_parameter(Name=PORT, Value=target["port"], Overwrite=True)
    write_verify(run_dir, target["url"])
    cutover(target, run_dir)
    assert history(ssm, PORT)[-1] == (2, target["port"], {"pre-cutover", "cutover"})
    rollback(None)
    assert values(ssm) == {"endpoint": OLD["endpoint"], "port": target["port"]}
    assert len(history(ssm, PORT)) == 2


# --- safety ---------------------------------------------------------------------------------------------

def test_rollback_refuses_after_a_foreign_change_unless_forced(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    cutover(target, run_dir)
    ssm.put_parameter(Name=ENDPOINT, Value="someone-else.internal", Overwrite=True)
    before = snapshot(ssm)
    assert "changed since the cutover by someone else" in rollback(run_dir, code=1).stderr
    assert "changed since the cutover" in rollback(None, code=1).stderr
    assert snapshot(ssm) == before
    rollback(run_dir, "--force")
    assert values(ssm) == OLD


def test_missing_parameter_is_bad_input_naming_the_path(aws, aws_calls, target, run_dir):
    write_verify(run_dir, target["url"])
    result = cutover(target, run_dir, code=2)
    assert ENDPOINT in result.stderr and "--param-prefix" in result.stderr
    with pytest.raises(ClientError):
        own_client("ssm").get_parameter(Name=ENDPOINT)  # and it was not created


def deny_put(ssm_client, denied: set[str], after: int = 0):
    """An IAM policy that denies PutParameter on some names (after `after` allowed calls to them): a real
    AccessDeniedException from the client, raised before the request leaves."""
    seen = {"n": 0}

    def handler(params, **_):
        if params["Name"] in denied:
            seen["n"] += 1
            if seen["n"] > after:
                message = f"not authorized to perform ssm:PutParameter on {params['Name']}"
                raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": message}}, "PutParameter")
    ssm_client.meta.events.register("before-parameter-build.ssm.PutParameter", handler)
    return ssm_client


def test_partial_failure_puts_the_endpoint_back(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    client = deny_put(boto3.client("ssm"), {PORT})
    result = cutover(target, run_dir, obj=Clients(ssm=client), code=3)
    assert "All parameters hold what they held before this run" in result.stderr
    assert f"{ENDPOINT} put back" in result.stderr
    assert "access denied (PutParameter)" in result.stderr and "IAM permissions" in result.stderr
    assert values(ssm) == OLD
    assert [v[1] for v in history(ssm, ENDPOINT)] == [OLD["endpoint"], target["endpoint"], OLD["endpoint"]]
    record = RunDir(run_dir).read("cutover")
    assert record["state"] == "cutover-failed" and record["holding"] == OLD
    cutover(target, run_dir)  # the cause fixed, a rerun finishes
    assert values(ssm) == {"endpoint": target["endpoint"], "port": target["port"]}


def test_failed_undo_reports_mixed_state_and_a_rerun_finishes(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    client = deny_put(deny_put(boto3.client("ssm"), {PORT}), {ENDPOINT}, after=1)
    result = cutover(target, run_dir, obj=Clients(ssm=client), code=3)
    assert "MIXED" in result.stderr
    assert values(ssm) == {"endpoint": target["endpoint"], "port": OLD["port"]}
    cutover(target, run_dir)
    assert values(ssm) == {"endpoint": target["endpoint"], "port": target["port"]}
    rollback(None)  # the labels still lead back to the values before the first attempt
    assert values(ssm) == OLD


# --- redeploy and the version limit ----------------------------------------------------------------------

@pytest.fixture
def ecs_service(aws, aws_calls):
    ecs = own_client("ecs")
    ecs.create_cluster(clusterName="storefront-test")
    ecs.register_task_definition(family="web", containerDefinitions=[{"name": "web", "image": "web:1", "memory": 256}])
    ecs.create_service(cluster="storefront-test", serviceName="web", taskDefinition="web", desiredCount=1)
    return ecs


def deployment_id(ecs) -> str:
    return ecs.describe_services(cluster="storefront-test", services=["web"])["services"][0]["deployments"][0]["id"]


def test_redeploy_forces_a_new_ecs_deployment_once(ssm, ecs_service, target, run_dir):
    write_verify(run_dir, target["url"])
    first = deployment_id(ecs_service)
    out = as_json(cutover(target, run_dir, "--redeploy", "storefront-test/web", "--json"))
    second = deployment_id(ecs_service)
    assert second != first and out["redeployed"] == [{"service": "storefront-test/web", "deployment": second}]
    cutover(target, run_dir, "--redeploy", "storefront-test/web")  # a rerun: nothing left to do
    assert deployment_id(ecs_service) == second
    rollback(run_dir, "--redeploy", "storefront-test/web")
    assert deployment_id(ecs_service) != second
    assert "not CLUSTER/SERVICE" in rollback(run_dir, "--redeploy", "web", code=2).stderr


def test_a_failed_redeploy_is_finished_by_a_rerun(ssm, ecs_service, target, run_dir):
    write_verify(run_dir, target["url"])
    first = deployment_id(ecs_service)
    result = cutover(target, run_dir, "--redeploy", "storefront-test/nope", "--redeploy", "storefront-test/web", code=3)
    assert "parameters are switched" in result.stderr and "rerun" in result.stderr
    assert values(ssm)["endpoint"] == target["endpoint"]
    cutover(target, run_dir, "--redeploy", "storefront-test/web")
    assert deployment_id(ecs_service) != first


def fill_history(ssm, name: str, label: str) -> None:
    """100 versions, the oldest carrying `label`: SSM refuses the next put while it stays there."""
    ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=[label])
    value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    for _ in range(99):
        ssm.put_parameter(Name=name, Value=value, Overwrite=True)
    with pytest.raises(ClientError, match="ParameterMaxVersionLimitExceeded"):
        ssm.put_parameter(Name=name, Value=value, Overwrite=True)


def test_version_limit_with_a_foreign_label_is_refused_with_the_fix(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    fill_history(ssm, ENDPOINT, "release-2023")
    before = snapshot(ssm)
    stderr = cutover(target, run_dir, code=1).stderr
    assert "aws ssm unlabel-parameter-version" in stderr and "release-2023" in stderr
    assert snapshot(ssm) == before


def test_version_limit_with_our_own_old_label_is_cleared(ssm, target, run_dir):
    write_verify(run_dir, target["url"])
    fill_history(ssm, ENDPOINT, "cutover-20200101T000000Z-abcd")
    cutover(target, run_dir)
    assert values(ssm)["endpoint"] == target["endpoint"]
    rollback(None)
    assert values(ssm) == OLD


# --- IAM ------------------------------------------------------------------------------------------------

def test_iam_actions_match_the_runbook(ssm, ecs_service, aws_calls, standalone_source, target, run_dir):
    """Every action the commands perform (plan with a cache and --env, cutover with a full parameter history
    and --redeploy, rollback) is listed, and every listed action is performed: the list is exact."""
    from aws_helpers import runbook_actions
    from migrate.cloud.aws import IAM_ACTIONS

    cache = stubbed_elasticache(cache_response("storefront-test", "127.0.0.1", int(target["port"])), "storefront-test")
    standalone_source.client().set("k", "v")  # an empty source is a plan blocker
    invoke("plan", "--source", standalone_source.url(), "--target", target["url"], "--serverless-cache",
           "storefront-test", "--env", ENV, obj=Clients(elasticache=cache))
    write_verify(run_dir, target["url"])
    fill_history(ssm, ENDPOINT, "cutover-20200101T000000Z-abcd")
    cutover(target, run_dir, "--redeploy", "storefront-test/web")
    rollback(None)
    assert aws_calls == set(IAM_ACTIONS) == runbook_actions()


# --- AWS problems are typed errors with hints --------------------------------------------------------------

def test_missing_credentials_region_and_cache_are_bad_input(aws, aws_calls, monkeypatch, target, run_dir):
    write_verify(run_dir, target["url"])
    cache = boto3.client("elasticache")
    stubber = Stubber(cache)
    stubber.add_client_error("describe_serverless_caches", "ServerlessCacheNotFoundFault", "not found", 404,
                             expected_params={"ServerlessCacheName": "nope"})
    stubber.activate()
    result = invoke("cutover", "--env", ENV, "--serverless-cache", "nope", obj=Clients(elasticache=cache), code=2)
    assert "serverless cache nope does not exist" in result.stderr and "AWS_REGION" in result.stderr

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert "no AWS region" in cutover(target, run_dir, code=2).stderr

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(run_dir / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(run_dir / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a fresh chain: the recording session cached credentials
    assert "no usable AWS credentials" in rollback(run_dir, code=2).stderr
