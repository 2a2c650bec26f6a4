"""`ecs-task`: a one-off Fargate task for the migration, in the storefront's own network.

ElastiCache Serverless is reachable only inside its VPC, and a live sync runs for hours: its home is a
task started in the storefront service's subnets and security groups, with its run dir on EFS so that a
replaced task resumes. This module builds the task definition (sized from plan's figures and the
scale model), the task role's least-privilege policy (derived from `aws.IAM_ACTIONS`, the calls the
commands make), the execution role's policy (image pull, logs, the two password secrets), and the exact
`aws ecs run-task` lines; with `register` it creates the roles and registers the definition.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

import botocore.exceptions as bex

from ..errors import BadInput
from ..net.keyspace import SLOT_COUNT
from .aws import IAM_ACTIONS, Clients, aws_errors, error_code
from .cutover import DEFAULT_PREFIX, parameter_names

CONTAINER = "redis-migrate"
RUN_DIR_VOLUME = "/data"  # the image's run dir volume
VOLUME_NAME = "run-dir"
STOP_TIMEOUT_S = 120  # Fargate's most: a stopping sync applies what it heard first (17.6 s measured mid-proof)
SOURCE_ENV, TARGET_ENV = "REDIS_MIGRATE_SOURCE_PASSWORD", "REDIS_MIGRATE_TARGET_PASSWORD"

# What the operator's own credentials need to run `ecs-task` (not the task: its role gets `task_policy`).
SETUP_ACTIONS = ("sts:GetCallerIdentity", "ssm:GetParametersByPath", "ssm:GetParameter",
                 "secretsmanager:DescribeSecret", "ecs:DescribeServices", "ecs:RegisterTaskDefinition",
                 "iam:GetRole", "iam:CreateRole", "iam:PutRolePolicy", "iam:PassRole", "logs:CreateLogGroup")
SETUP_HINT = "the credentials running ecs-task need: " + ", ".join(SETUP_ACTIONS)

# The scale model (RUNBOOK "Scale-out"): CPU seconds per million keys, measured by scripts/bench.py.
C_DUMP_S, C_REPLAY_S = 3.7, 3.5
C_SOURCE_S = 7.5  # the source servers' CPU per million keys, spread over its primaries (one thread each)
MB_PER_PROCESS = 300  # each stage process stays under this (verify 179 MB, the copy 114 MB, sync < 260 MB)
MAX_WORKERS = 15
SMALL_COPY_KEYS = 1_000_000  # below this one dump worker is done in seconds: more vCPUs cost more than they save

# Fargate's CPU units and, for each, its memory range in MiB and step.
FARGATE = ((1024, 2048, 8192, 1024), (2048, 4096, 16384, 1024), (4096, 8192, 30720, 1024),
           (8192, 16384, 61440, 4096), (16384, 32768, 122880, 8192))

_IMAGE = re.compile(r"^(?:(?P<registry>[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?)/)?"
                    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
                    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))$")
_ECR = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TaskRequest:
    """What the operator asked for (cli.py fills it from the options)."""

    env: str
    image: str
    register: bool = False
    create_roles: bool = False
    cluster: str | None = None
    service: str | None = None
    efs_file_system: str | None = None
    efs_access_point: str | None = None
    source_secret: str | None = None
    source_parameter: str | None = None
    target_secret: str | None = None
    target_parameter: str | None = None
    log_group: str = "/ecs/redis-migrate"
    keys: int | None = None
    primaries: int | None = None
    plan: dict | None = None  # plan.json of a run dir (PlanLedger), read by the caller
    slots_split: int = 1
    stage: str = "sync"
    source_url: str | None = None
    target_url: str | None = None
    serverless_cache: str | None = None
    iam_users: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    task_role_arn: str | None = None
    execution_role_arn: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def family(self) -> str:
        return f"redis-migrate-{self.env}"


@dataclass(frozen=True)
class Sizing:
    keys: int | None
    primaries: int
    workers: int
    cpu: int
    memory: int
    copy_seconds: float | None

    def describe(self) -> dict:
        return {"keys_per_task": self.keys, "primaries_per_task": self.primaries, "workers": self.workers,
                "vcpu": self.cpu / 1024, "cpu": self.cpu, "memory_mib": self.memory,
                "copy_cpu_bound_s": None if self.copy_seconds is None else round(self.copy_seconds, 1)}


@dataclass(frozen=True)
class Account:
    account: str
    region: str
    partition: str = "aws"

    def arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return (f"arn:{self.partition}:{service}:{self.region if region else ''}:"
                f"{self.account if account else ''}:{resource}")


# --- the whole command ---------------------------------------------------------------------------------

def ecs_task(request: TaskRequest, clients: Clients) -> dict:
    """Check the inputs against AWS, build everything, register it if asked; the result to show."""
    image = check_image(request.image)
    check_request(request)
    names = parameter_names(request.env, request.prefix)
    prefix = names["endpoint"].rsplit("/", 1)[0]
    account = caller_account(clients)
    check_env_parameters(clients, prefix)
    secrets = [secret for secret in (_secret(clients, account, SOURCE_ENV, request.source_secret,
                                             request.source_parameter, "source"),
                                     _secret(clients, account, TARGET_ENV, request.target_secret,
                                             request.target_parameter, "target")) if secret]
    network = service_network(clients, request.cluster, request.service) if request.service else None
    sizing = size_task(*_figures(request), request.slots_split)
    task_role = request.task_role_arn or account.arn("iam", f"role/{request.family}-task", region=False)
    execution_role = request.execution_role_arn or account.arn("iam", f"role/{request.family}-execution",
                                                               region=False)
    definition = task_definition(request, image, sizing, secrets, account, task_role, execution_role)
    result = {
        "task_definition": definition,
        "task_role": {"arn": task_role, "policy": task_policy(request, account, prefix)},
        "execution_role": {"arn": execution_role,
                           "policy": execution_policy(request, image, secrets, account)},
        "trust_policy": trust_policy(account),
        "sizing": sizing.describe(),
        "network": network,
        "warnings": _warnings(request, secrets),
    }
    if request.register:
        result["registered"] = register(clients, request, result)
    revision = result.get("registered", {}).get("revision")
    result["run_task"] = run_task_lines(request, network, revision)
    return result


def _warnings(request: TaskRequest, secrets: list[dict]) -> list[str]:
    warnings = []
    if not request.efs_file_system:
        warnings.append("no --efs-file-system: the run dir lives and dies with the task, so a stopped task "
                        "cannot resume (give an EFS file system for anything but a rehearsal)")
    if not secrets:
        warnings.append("no password secret: the task connects without a password (or with --source-iam/"
                        "--target-iam tokens)")
    if not request.service:
        warnings.append("no --cluster/--service: the run-task lines carry placeholders for the subnets and "
                        "security groups, and the task role gets no ecs:UpdateService (cutover --redeploy)")
    return warnings


# --- inputs ----------------------------------------------------------------------------------------------

def check_image(uri: str) -> dict:
    """A pinned image reference (a tag or a digest): every task of the migration must run the same build."""
    match = _IMAGE.match(uri or "")
    if not match:
        raise BadInput(f"--image {uri!r} is not a container image reference with a tag or digest",
                       "e.g. --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/redis-migrate:0.1.0 "
                       "(lower-case repository, then :TAG or @sha256:DIGEST)")
    registry = match.group("registry") or ""
    ecr = _ECR.match(registry)
    return {"uri": uri, "registry": registry, "repository": match.group("repo"),
            "ecr": {"account": ecr.group("account"), "region": ecr.group("region")} if ecr else None}


def check_request(request: TaskRequest) -> None:
    """The options that need no AWS: URLs go into the task's command line, which ECS shows to anyone who
    can describe the task, so no password there (the passwords come from the secrets); names, not ARNs."""
    for role, url in (("source", request.source_url), ("target", request.target_url)):
        if url and re.match(r"^rediss?://[^/@]*:[^/@]+@", url):
            raise BadInput(f"--{role} carries a password in the URL, which ECS would show in the task's command",
                           f"drop it from the URL and give --{role}-secret ARN or --{role}-password-parameter NAME")
    if request.slots_split > 1 and request.stage != "run":
        raise BadInput(f"--slots-split {request.slots_split} splits `run` by slot range; {request.stage} copies "
                       "the whole keyspace in one task", "use --stage run with --slots-split, or drop --slots-split")
    for name in (request.cluster, request.service, request.serverless_cache, *request.iam_users):
        if name is not None and not _NAME.match(name):
            raise BadInput(f"{name!r} is not an AWS resource name", "use the plain name, not an ARN or a URL")
    if bool(request.cluster) != bool(request.service):
        raise BadInput("--cluster and --service go together: the storefront's ECS service, whose network the task "
                       "copies", "give both, e.g. --cluster storefront-prod --service storefront-api")


@contextlib.contextmanager
def _setup_call(subject: str) -> Iterator[None]:
    """aws_errors, with a hint about the operator's own permissions where access is denied."""
    try:
        with aws_errors(subject):
            yield
    except BadInput as exc:
        if "access denied" in exc.message:
            raise BadInput(exc.message, SETUP_HINT) from None
        raise


def caller_account(clients: Clients) -> Account:
    with _setup_call("AWS STS (who am I)"):
        identity = clients.get("sts").get_caller_identity()
    region = clients.get("ssm").meta.region_name
    partition = identity["Arn"].split(":")[1] if identity.get("Arn", "").startswith("arn:") else "aws"
    return Account(identity["Account"], region, partition)


def check_env_parameters(clients: Clients, prefix: str) -> None:
    """The env must be one the storefront has: its parameters exist (a typo would scope the role to nothing)."""
    with _setup_call(f"SSM path {prefix}/"):
        found = clients.ssm.get_parameters_by_path(Path=prefix + "/", MaxResults=10)["Parameters"]
    if not found:
        raise BadInput(f"no SSM parameters found under {prefix}/",
                       "check --env (and --param-prefix): the task role is scoped to the parameters the "
                       "storefront reads, which must exist already (aws ssm get-parameters-by-path --path "
                       f"{prefix}/)")


def _secret(clients: Clients, account: Account, env_name: str, secret_arn: str | None, parameter: str | None,
            role: str) -> dict | None:
    """One `secrets` entry ({name, valueFrom}), checked to exist; an SSM parameter must be a SecureString."""
    if secret_arn and parameter:
        raise BadInput(f"--{role}-secret and --{role}-password-parameter both given",
                       "give one: a Secrets Manager ARN or an SSM SecureString parameter")
    if secret_arn:
        match = _SECRET_ARN.match(secret_arn)
        if not match:
            raise BadInput(f"--{role}-secret {secret_arn!r} is not a Secrets Manager ARN",
                           "give the secret's ARN: arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-abcdef")
        base = ":".join(secret_arn.split(":")[:7])
        with _setup_call(f"secret {base}"):
            try:
                clients.get("secretsmanager").describe_secret(SecretId=base)
            except bex.ClientError as exc:  # a missing secret is bad input; the rest, aws_errors says
                if error_code(exc) == "ResourceNotFoundException":
                    raise BadInput(f"--{role}-secret {base} does not exist",
                                   "check the ARN and the region (aws secretsmanager list-secrets)") from None
                raise
        exact = base if re.search(r"-[A-Za-z0-9]{6}$", base) else base + "-??????"  # the suffix AWS appends
        return {"name": env_name, "valueFrom": secret_arn, "policy_arn": exact, "kind": "secretsmanager"}
    if parameter:
        name = parameter if parameter.startswith("arn:") else "/" + parameter.lstrip("/")
        with _setup_call(f"SSM parameter {name}"):
            try:
                found = clients.ssm.get_parameter(Name=name, WithDecryption=False)["Parameter"]
            except bex.ClientError as exc:
                if error_code(exc) == "ParameterNotFound":
                    raise BadInput(f"--{role}-password-parameter {name} does not exist",
                                   "create it as a SecureString: aws ssm put-parameter --type SecureString "
                                   f"--name {name} --value ...") from None
                raise
        if found.get("Type") != "SecureString":
            raise BadInput(f"--{role}-password-parameter {name} is a {found.get('Type')}, not a SecureString",
                           "store passwords encrypted: aws ssm put-parameter --type SecureString --overwrite ...")
        arn = found.get("ARN") or account.arn("ssm", "parameter" + name)
        return {"name": env_name, "valueFrom": arn, "policy_arn": arn, "kind": "ssm"}
    return None


def service_network(clients: Clients, cluster: str, service: str) -> dict:
    """The storefront service's awsvpc subnets and security groups: the task then reaches what it reaches."""
    with _setup_call(f"ECS service {cluster}/{service}"):
        try:
            reply = clients.ecs.describe_services(cluster=cluster, services=[service])
        except bex.ClientError as exc:
            if error_code(exc) == "ClusterNotFoundException":
                raise BadInput(f"ECS cluster {cluster} does not exist",
                               "check --cluster and the region (aws ecs list-clusters)") from None
            raise
    services = [s for s in reply.get("services", []) if s.get("status", "ACTIVE") != "INACTIVE"]
    if not services:
        raise BadInput(f"ECS service {service} does not exist in cluster {cluster}",
                       f"check --service and --cluster (aws ecs list-services --cluster {cluster})")
    vpc = (services[0].get("networkConfiguration") or {}).get("awsvpcConfiguration")
    if not vpc or not vpc.get("subnets"):
        raise BadInput(f"ECS service {cluster}/{service} has no awsvpc network configuration",
                       "name the storefront's Fargate service (network mode awsvpc), whose subnets reach the caches")
    return {"cluster": cluster, "service": service, "subnets": list(vpc["subnets"]),
            "securityGroups": list(vpc.get("securityGroups", [])),
            "assignPublicIp": vpc.get("assignPublicIp", "DISABLED")}


# --- sizing ---------------------------------------------------------------------------------------------

def _figures(request: TaskRequest) -> tuple[int | None, int]:
    """(keys, primaries) from plan.json (run dir) or --keys/--primaries."""
    if request.plan:
        source = request.plan.get("source", {})
        return source.get("keys"), max(1, len(source.get("keys_per_master") or {}) or 1)
    return request.keys, request.primaries or 1


def size_task(keys: int | None, primaries: int, split: int = 1) -> Sizing:
    """One vCPU per dump worker (up to the primaries a task reads) plus one for the replay; memory for every
    stage process at MB_PER_PROCESS (verify runs one worker per master of each side, plus its parent)."""
    task_keys = None if keys is None else math.ceil(keys / split)
    task_primaries = max(1, math.ceil(primaries / split))
    workers = min(task_primaries, MAX_WORKERS)
    if task_keys is not None and task_keys < SMALL_COPY_KEYS:
        workers = 1
    processes = max(workers + 2, task_primaries + 2)
    cpu, memory = fargate_size(workers + 1, max(1024, processes * MB_PER_PROCESS))
    copy = None
    if task_keys is not None:
        millions, cores = task_keys / 1e6, cpu / 1024
        copy = max(millions * C_DUMP_S / workers, millions * C_REPLAY_S, millions * (C_DUMP_S + C_REPLAY_S) / cores,
                   millions * C_SOURCE_S / min(task_primaries, workers))
    return Sizing(task_keys, task_primaries, workers, cpu, memory, copy)


def fargate_size(vcpus: int, memory_mib: int) -> tuple[int, int]:
    """The smallest valid Fargate CPU/memory pair with at least these."""
    for cpu, low, high, step in FARGATE:
        if cpu >= vcpus * 1024 and memory_mib <= high:
            return cpu, max(low, math.ceil(memory_mib / step) * step)
    raise BadInput(f"no Fargate size has {vcpus} vCPU and {memory_mib} MiB",
                   "split the copy over more tasks (--slots-split N)")


# --- documents ---------------------------------------------------------------------------------------

def task_definition(request: TaskRequest, image: dict, sizing: Sizing, secrets: list[dict], account: Account,
                    task_role: str, execution_role: str) -> dict:
    container = {
        "name": CONTAINER, "image": image["uri"], "essential": True,
        "command": ["status", "--run-dir", f"{RUN_DIR_VOLUME}/{request.env}"],
        "secrets": [{"name": s["name"], "valueFrom": s["valueFrom"]} for s in secrets],
        "environment": [{"name": "AWS_REGION", "value": account.region}, {"name": "TQDM_DISABLE", "value": "1"}],
        # an init as PID 1 forwards ECS's SIGTERM (PID 1 itself ignores signals it has no handler for)
        "linuxParameters": {"initProcessEnabled": True},
        "stopTimeout": STOP_TIMEOUT_S,
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": request.log_group, "awslogs-region": account.region,
            "awslogs-stream-prefix": request.family}},
    }
    definition = {
        "family": request.family, "taskRoleArn": task_role, "executionRoleArn": execution_role,
        "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
        "cpu": str(sizing.cpu), "memory": str(sizing.memory), "containerDefinitions": [container],
    }
    if request.efs_file_system:
        efs = {"fileSystemId": request.efs_file_system, "transitEncryption": "ENABLED"}
        if request.efs_access_point:
            efs["authorizationConfig"] = {"accessPointId": request.efs_access_point, "iam": "ENABLED"}
        else:
            efs["rootDirectory"] = "/"
        definition["volumes"] = [{"name": VOLUME_NAME, "efsVolumeConfiguration": efs}]
        container["mountPoints"] = [{"sourceVolume": VOLUME_NAME, "containerPath": RUN_DIR_VOLUME,
                                     "readOnly": False}]
    return definition


def _statement(sid: str, actions: list[str], resources: list[str]) -> dict:
    return {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": sorted(resources)}


def task_policy(request: TaskRequest, account: Account, prefix: str) -> dict:
    """Least privilege for the commands the task runs: the SSM calls cutover/rollback make (IAM_ACTIONS) on
    the env's parameters only, the cache's description, its IAM auth, the storefront's redeploy, the EFS."""
    cache = request.serverless_cache or f"storefront-{request.env}"
    cache_arn = account.arn("elasticache", f"serverlesscache:{cache}")
    statements = [
        _statement("SsmEnvParameters", [a for a in IAM_ACTIONS if a.startswith("ssm:")],
                   [account.arn("ssm", f"parameter{prefix}/*")]),
        _statement("DescribeTargetCache", [a for a in IAM_ACTIONS if a.startswith("elasticache:")], [cache_arn]),
    ]
    if request.iam_users:
        users = [account.arn("elasticache", f"user:{user}") for user in request.iam_users]
        statements.append(_statement("IamAuth", ["elasticache:Connect"], [cache_arn, *users]))
    if request.service:
        statements.append(_statement("Redeploy", [a for a in IAM_ACTIONS if a.startswith("ecs:")],
                                     [account.arn("ecs", f"service/{request.cluster}/{request.service}")]))
    if request.efs_file_system:
        statements.append(_statement("RunDirOnEfs", ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                                     [account.arn("elasticfilesystem", f"file-system/{request.efs_file_system}")]))
    return {"Version": "2012-10-17", "Statement": statements}


def execution_policy(request: TaskRequest, image: dict, secrets: list[dict], account: Account) -> dict:
    """What ECS itself needs to start the task: pull the image, write the logs, read the two secrets."""
    statements = [_statement("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                             [account.arn("logs", f"log-group:{request.log_group}:*")])]
    if image["ecr"]:
        ecr = image["ecr"]
        repository = f"arn:{account.partition}:ecr:{ecr['region']}:{ecr['account']}:repository/{image['repository']}"
        statements.append(_statement("PullImage", ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                                                   "ecr:GetDownloadUrlForLayer"], [repository]))
        statements.append(_statement("EcrLogin", ["ecr:GetAuthorizationToken"], ["*"]))  # no resource-level form
    by_kind = {"secretsmanager": ["secretsmanager:GetSecretValue"], "ssm": ["ssm:GetParameters"]}
    for kind, actions in by_kind.items():
        arns = [s["policy_arn"] for s in secrets if s["kind"] == kind]
        if arns:
            statements.append(_statement(f"Passwords{kind.title()}", actions, arns))
    return {"Version": "2012-10-17", "Statement": statements}


def trust_policy(account: Account) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account.account}}}]}


# --- run-task lines --------------------------------------------------------------------------------------

def slot_ranges(split: int) -> list[str]:
    """`split` even slot ranges covering 0-16383 once (split along the source's shards where you can)."""
    if not 1 <= split <= SLOT_COUNT:
        raise BadInput(f"--slots-split {split} is not between 1 and {SLOT_COUNT}", "e.g. --slots-split 4")
    bounds = [round(i * SLOT_COUNT / split) for i in range(split + 1)]
    return [f"{bounds[i]}-{bounds[i + 1] - 1}" for i in range(split)]


def stage_command(request: TaskRequest, slots: str | None) -> list[str]:
    """The container command for one task: the stage, its URLs (no password), its run dir on the volume."""
    [run_dir] = _run_dirs(request, [slots])
    command = [request.stage, "--source", request.source_url or "redis://OLD-REDIS:6379/0",
               "--target", request.target_url or "rediss://CACHE-ENDPOINT:6379"]
    command += ["--run-dir", run_dir]
    if slots:  # the tasks write into the same cache at once: each checks only its own range is empty there
        command += ["--slots", slots]
    return command + list(request.extra_args)


def _run_dirs(request: TaskRequest, ranges: list[str | None]) -> list[str]:
    base = f"{RUN_DIR_VOLUME}/{request.env}"
    return [f"{base}/slots-{slots}" if slots else base for slots in ranges]


def cutover_command(request: TaskRequest, ranges: list[str | None]) -> list[str]:
    """The cutover from a second one-off task on the same run dir(s): it sees the sync task's state there."""
    command = ["cutover", "--env", request.env, "--target", request.target_url or "rediss://CACHE-ENDPOINT:6379"]
    for run_dir in _run_dirs(request, ranges):
        command += ["--run-dir", run_dir]
    if request.stage == "sync":
        command += ["--source", request.source_url or "redis://OLD-REDIS:6379/0"]
    if request.service:
        command += ["--redeploy", f"{request.cluster}/{request.service}"]
    return command + ["--dry-run"]


def run_task_lines(request: TaskRequest, network: dict | None, revision: int | None) -> list[dict]:
    """One `aws ecs run-task` per task: the stage (one per slot range with --slots-split), and `status`."""
    if network:
        vpc = (f"awsvpcConfiguration={{subnets=[{','.join(network['subnets'])}],"
               f"securityGroups=[{','.join(network['securityGroups'])}],assignPublicIp={network['assignPublicIp']}}}")
    else:
        vpc = "awsvpcConfiguration={subnets=[SUBNET-ID],securityGroups=[SG-ID],assignPublicIp=DISABLED}"
    cluster = request.cluster or "CLUSTER"
    definition = f"{request.family}:{revision}" if revision else request.family
    ranges = slot_ranges(request.slots_split) if request.slots_split > 1 else [None]
    commands = [(f"{request.stage} slots {slots}" if slots else request.stage, stage_command(request, slots))
                for slots in ranges]
    commands += [("status", ["status", "--run-dir", _run_dirs(request, ranges)[0]]),
                 ("cutover, rehearsed (drop --dry-run to cut over)", cutover_command(request, ranges))]
    lines = []
    for what, command in commands:
        overrides = json.dumps({"containerOverrides": [{"name": CONTAINER, "command": command}]},
                               separators=(",", ":"))
        line = shlex.join(["aws", "ecs", "run-task", "--cluster", cluster, "--launch-type", "FARGATE",
                           "--task-definition", definition, "--started-by", f"redis-migrate-{request.env}",
                           "--network-configuration", vpc, "--overrides", overrides])
        lines.append({"what": what, "command": command, "line": line})
    return lines


# --- registering ------------------------------------------------------------------------------------------

def register(clients: Clients, request: TaskRequest, result: dict) -> dict:
    """Create (or update) the two roles where asked, the log group, then register the task definition."""
    done: dict = {}
    roles = (("task", result["task_role"]), ("execution", result["execution_role"]))
    for kind, role in roles:
        name = role["arn"].rsplit("/", 1)[1]
        if request.create_roles:
            _ensure_role(clients, name, result["trust_policy"], role["policy"], kind)
            done[f"{kind}_role"] = "created or updated"
        else:
            _require_role(clients, name, kind)
    with _setup_call(f"log group {request.log_group}"):
        try:
            clients.get("logs").create_log_group(logGroupName=request.log_group)
            done["log_group"] = "created"
        except bex.ClientError as exc:
            if not error_code(exc) == "ResourceAlreadyExistsException":
                raise
            done["log_group"] = "exists"
    with _setup_call(f"task definition {request.family}"):
        reply = clients.ecs.register_task_definition(**result["task_definition"])["taskDefinition"]
    done.update(arn=reply["taskDefinitionArn"], revision=reply["revision"])
    return done


def _ensure_role(clients: Clients, name: str, trust: dict, policy: dict, kind: str) -> None:
    iam = clients.get("iam")
    with _setup_call(f"IAM role {name}"):
        try:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                            Description=f"redis-migrate one-off ECS task ({kind} role)")
        except bex.ClientError as exc:
            if not error_code(exc) == "EntityAlreadyExists":
                raise
        iam.put_role_policy(RoleName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))


def _require_role(clients: Clients, name: str, kind: str) -> None:
    with _setup_call(f"IAM role {name}"):
        try:
            clients.get("iam").get_role(RoleName=name)
        except bex.ClientError as exc:
            if error_code(exc) == "NoSuchEntity":
                raise BadInput(f"the {kind} role {name} does not exist",
                               f"pass --create-roles to create it with the policy shown, or --{kind}-role-arn "
                               "for a role you manage") from None
            raise
