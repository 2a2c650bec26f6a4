"""`ecs-task` against moto's server (ECS, EC2, IAM, STS, SSM, Secrets Manager, CloudWatch Logs over HTTP).

Outcomes are read back from AWS: the registered task definition (describe_task_definition), the policy as
moto's IAM accepts it, the network of a moto ECS service; bad input exits 2 with a message and a hint.
"""

from __future__ import annotations

import json
import shlex

import boto3
import pytest

from aws_helpers import as_json, invoke, own_client
from migrate.cloud.aws import IAM_ACTIONS
from migrate.cloud.ecs_task import SETUP_ACTIONS, fargate_size, size_task, slot_ranges
from migrate.rundir import PlanLedger, RunDir

ENV = "test"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/redis-migrate:0.1.0"
ENV_PATH_ARN = f"arn:aws:ssm:us-east-1:123456789012:parameter/storefront/{ENV}/redis/*"


@pytest.fixture
def storefront(aws):
    """moto: the env's SSM parameters, the two password secrets, and the storefront's Fargate service."""
    ssm = own_client("ssm")
    ssm.put_parameter(Name=f"/storefront/{ENV}/redis/endpoint", Value="old-redis.internal", Type="String")
    ssm.put_parameter(Name=f"/storefront/{ENV}/redis/port", Value="6379", Type="String")
    ssm.put_parameter(Name=f"/storefront/{ENV}/redis-migrate/target-password", Value="tgt-pw", Type="SecureString")
    ssm.put_parameter(Name="/plain/password", Value="pw", Type="String")
    secret = own_client("secretsmanager").create_secret(Name=f"{ENV}/redis/source", SecretString="src-pw")["ARN"]
    ec2 = own_client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)]
    group = ec2.create_security_group(GroupName="storefront", Description="storefront", VpcId=vpc)["GroupId"]
    ecs = own_client("ecs")
    ecs.create_cluster(clusterName="storefront-test")
    ecs.register_task_definition(family="api", containerDefinitions=[{"name": "api", "image": "api:1", "memory": 512}],
                                 networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512")
    ecs.create_service(cluster="storefront-test", serviceName="storefront-api", taskDefinition="api", desiredCount=0,
                       launchType="FARGATE", networkConfiguration={"awsvpcConfiguration": {
                           "subnets": subnets, "securityGroups": [group], "assignPublicIp": "DISABLED"}})
    return {"secret": secret, "subnets": subnets, "group": group}


def record_calls(monkeypatch) -> set[str]:
    """Every AWS API action ecs-task performs, as IAM names."""
    calls: set[str] = set()
    session = boto3.session.Session()
    session.events.register("before-parameter-build",
                            lambda model, **_: calls.add(f"{model.service_model.signing_name}:{model.name}"))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    return calls


def ecs_task(*args, code=0):
    return invoke("ecs-task", "--env", ENV, *args, code=code)


FULL = ("--image", IMAGE, "--cluster", "storefront-test", "--service", "storefront-api",
        "--efs-file-system", "fs-0123abcd", "--efs-access-point", "fsap-0123abcd",
        "--target-password-parameter", f"/storefront/{ENV}/redis-migrate/target-password",
        "--source", "redis://old-redis.internal:6379/0", "--target", "rediss://cache.serverless.use1:6379",
        "--iam-user", "migrator", "--keys", "3000000", "--primaries", "3")


def test_registers_and_reads_back_with_efs_secrets_and_logs(storefront, monkeypatch):
    calls = record_calls(monkeypatch)
    result = as_json(ecs_task(*FULL, "--source-secret", storefront["secret"], "--register", "--create-roles",
                              "--json"))
    assert result["registered"]["revision"] == 1
    described = own_client("ecs").describe_task_definition(taskDefinition=f"redis-migrate-{ENV}")["taskDefinition"]
    [volume] = described["volumes"]
    efs = volume["efsVolumeConfiguration"]
    assert volume["name"] == "run-dir" and efs["fileSystemId"] == "fs-0123abcd"
    assert efs["transitEncryption"] == "ENABLED"
    assert efs["authorizationConfig"] == {"accessPointId": "fsap-0123abcd", "iam": "ENABLED"}
    container = described["containerDefinitions"][0]
    assert container["mountPoints"] == [{"sourceVolume": "run-dir", "containerPath": "/data", "readOnly": False}]
    assert {s["name"]: s["valueFrom"] for s in container["secrets"]} == {
        "REDIS_MIGRATE_SOURCE_PASSWORD": storefront["secret"],
        "REDIS_MIGRATE_TARGET_PASSWORD":
            f"arn:aws:ssm:us-east-1:123456789012:parameter/storefront/{ENV}/redis-migrate/target-password"}
    assert not any("PASSWORD" in e["name"] for e in container["environment"])  # never in plain text
    assert container["logConfiguration"] == {"logDriver": "awslogs", "options": {
        "awslogs-group": "/ecs/redis-migrate", "awslogs-region": "us-east-1",
        "awslogs-stream-prefix": f"redis-migrate-{ENV}"}}
    assert container["linuxParameters"]["initProcessEnabled"] is True and container["stopTimeout"] == 120
    assert (described["cpu"], described["memory"], described["networkMode"]) == ("4096", "8192", "awsvpc")
    assert described["taskRoleArn"].endswith(f"role/redis-migrate-{ENV}-task")
    # the roles exist in moto's IAM with the policies printed
    iam = own_client("iam")
    stored = iam.get_role_policy(RoleName=f"redis-migrate-{ENV}-task", PolicyName=f"redis-migrate-{ENV}-task-policy")
    assert stored["PolicyDocument"] == result["task_role"]["policy"]
    assert own_client("logs").describe_log_groups(logGroupNamePrefix="/ecs/redis-migrate")["logGroups"]
    assert "ecs:RegisterTaskDefinition" in calls and "iam:PutRolePolicy" in calls, calls
    assert calls <= set(SETUP_ACTIONS), calls - set(SETUP_ACTIONS)  # what the RUNBOOK tells the operator to have
    # a second registration is a new revision, the roles are updated in place
    assert as_json(ecs_task(*FULL, "--register", "--create-roles", "--json"))["registered"]["revision"] == 2


def test_the_policy_is_accepted_by_iam_and_scoped_to_the_env(storefront):
    result = as_json(ecs_task(*FULL, "--source-secret", storefront["secret"], "--json"))
    policy = result["task_role"]["policy"]
    created = own_client("iam").create_policy(PolicyName="redis-migrate-test-task", PolicyDocument=json.dumps(policy))
    assert created["Policy"]["Arn"].endswith(":policy/redis-migrate-test-task")
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == set(IAM_ACTIONS) | {"elasticache:Connect", "elasticfilesystem:ClientMount",
                                          "elasticfilesystem:ClientWrite"}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            assert "*" not in resource or resource == ENV_PATH_ARN, statement
        if any(a.startswith("ssm:") for a in statement["Action"]):
            assert statement["Resource"] == [ENV_PATH_ARN]
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert "arn:aws:ecs:us-east-1:123456789012:service/storefront-test/storefront-api" in resources
    assert "arn:aws:elasticache:us-east-1:123456789012:user:migrator" in resources
    own_client("iam").create_policy(PolicyName="exec", PolicyDocument=json.dumps(result["execution_role"]["policy"]))
    secret_statement = [s for s in result["execution_role"]["policy"]["Statement"] if "Secretsmanager" in s["Sid"]]
    assert secret_statement[0]["Resource"] == [storefront["secret"]]  # the one secret, exactly
    # the printed form carries the same documents
    text = ecs_task(*FULL).output
    assert "# task role" in text and ENV_PATH_ARN in text and "aws ecs run-task" in text


def test_the_network_comes_from_the_storefront_service(storefront):
    result = as_json(ecs_task(*FULL, "--stage", "run", "--slots-split", "2", "--json", "--", "--workers", "2"))
    assert result["network"]["subnets"] == storefront["subnets"]
    assert result["network"]["securityGroups"] == [storefront["group"]]
    lines = [run["line"] for run in result["run_task"]]
    assert len(lines) == 4  # two slot ranges, then status and the cutover
    cutover = result["run_task"][3]["command"]
    assert cutover[0] == "cutover" and cutover[-1] == "--dry-run"
    assert [cutover[i + 1] for i, a in enumerate(cutover) if a == "--run-dir"] == [
        f"/data/{ENV}/slots-0-8191", f"/data/{ENV}/slots-8192-16383"]
    for line, slots in zip(lines, ("0-8191", "8192-16383")):
        argv = shlex.split(line)
        assert argv[:3] == ["aws", "ecs", "run-task"] and argv[argv.index("--launch-type") + 1] == "FARGATE"
        network = argv[argv.index("--network-configuration") + 1]
        assert f"subnets=[{','.join(storefront['subnets'])}]" in network
        assert f"securityGroups=[{storefront['group']}]" in network and "assignPublicIp=DISABLED" in network
        command = json.loads(argv[argv.index("--overrides") + 1])["containerOverrides"][0]["command"]
        assert command[0] == "run" and command[command.index("--slots") + 1] == slots
        assert command[command.index("--run-dir") + 1] == f"/data/{ENV}/slots-{slots}"
        assert command[-2:] == ["--workers", "2"]


def test_sizes_from_the_plan_in_a_run_dir(storefront, tmp_path):
    PlanLedger(RunDir(tmp_path / "rd", create=True)).record(
        {"source": {"keys": 50_000_000, "keys_per_master": {f"m{i}": 1 for i in range(6)}}})
    result = as_json(ecs_task("--image", IMAGE, "--run-dir", tmp_path / "rd", "--json"))
    assert result["sizing"]["workers"] == 6 and result["sizing"]["vcpu"] == 8
    assert int(result["task_definition"]["memory"]) >= 8 * 300


def test_sizing_model():
    assert size_task(100_000, 1).cpu == 2048  # dump and replay at once
    assert size_task(None, 3).workers == 3
    assert size_task(50_000_000, 6).cpu == 8192 and size_task(50_000_000, 6, split=3).cpu == 4096
    assert fargate_size(2, 1200) == (2048, 4096) and fargate_size(4, 9000) == (4096, 9216)
    assert slot_ranges(3) == ["0-5460", "5461-10922", "10923-16383"]


BAD_INPUTS = [
    (("--env", "nope", "--image", IMAGE), "no SSM parameters found under /storefront/nope/redis/"),
    (("--env", ENV, "--image", IMAGE, "--cluster", "storefront-test", "--service", "ghost"),
     "ECS service ghost does not exist in cluster storefront-test"),
    (("--env", ENV, "--image", IMAGE, "--cluster", "ghost-cluster", "--service", "storefront-api"),
     "ECS cluster ghost-cluster does not exist"),
    (("--env", ENV, "--image", "HTTP://Not An Image"), "is not a container image reference"),
    (("--env", ENV, "--image", "redis-migrate"), "with a tag or digest"),
    (("--env", ENV, "--image", IMAGE, "--source-password-parameter", "/plain/password"), "not a SecureString"),
    (("--env", ENV, "--image", IMAGE, "--target-password-parameter", "/no/such"), "does not exist"),
    (("--env", ENV, "--image", IMAGE, "--source-secret", "not-an-arn"), "is not a Secrets Manager ARN"),
    (("--env", ENV, "--image", IMAGE, "--source-secret",
      "arn:aws:secretsmanager:us-east-1:123456789012:secret:ghost-AbCdEf"), "does not exist"),
    (("--env", ENV, "--image", IMAGE, "--source", "redis://:hunter2-secret@old:6379/0"), "password in the URL"),
    (("--env", ENV, "--image", IMAGE, "--slots-split", "2"), "splits `run` by slot range"),
    (("--env", ENV, "--image", IMAGE, "--register"), "role redis-migrate-test-task does not exist"),
    (("--env", ENV, "--image", IMAGE, "--run-dir", "/nonexistent/rd"), "does not exist"),
]


def test_bad_input_is_exit_2_with_a_message(storefront):
    """One moto set-up for every case (each is its own CLI invocation)."""
    for args, needle in BAD_INPUTS:
        result = invoke("ecs-task", *args, code=2)
        assert needle in result.output and "hint:" in result.output, result.output
        assert "hunter2-secret" not in result.output
    assert not own_client("ecs").list_task_definitions(familyPrefix="redis-migrate")["taskDefinitionArns"]


def test_a_sync_in_another_task_is_judged_by_its_heartbeat(tmp_path):
    """A cutover or status in a second task on the same EFS run dir cannot see the sync task's pid; a sync on
    this machine whose pid is gone is not running, whatever its heartbeat says."""
    import time

    from migrate.sync.protocol import SyncLedger, process_host
    run_dir = RunDir(tmp_path / "rd", create=True)
    ledger = SyncLedger.load(run_dir)
    dead_pid = 2**22 + 1  # above pid_max's default: no such process here
    ledger.update(pid=dead_pid, host="sync-task-ip-10-0-1-7/4026532", heartbeat_at=time.time(), state="following")
    assert SyncLedger.load(run_dir).running()
    ledger.update(heartbeat_at=time.time() - 30)
    assert not SyncLedger.load(run_dir).running()
    ledger.update(host=process_host(), heartbeat_at=time.time())
    assert not SyncLedger.load(run_dir).running()
