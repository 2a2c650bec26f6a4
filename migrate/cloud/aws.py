"""AWS access: boto3 clients through the standard credential chain, SSM history reads, serverless cache facts.

Every botocore failure leaves this module as a typed error with a hint (`aws_errors`), never as a traceback,
and never with a credential in it. Clients are built lazily, so a command that needs no AWS never asks for
credentials; tests hand in a prebuilt client where moto cannot serve the call (ElastiCache Serverless).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import botocore.exceptions as bex

from ..errors import BadInput, GateRefused, MigrateError, RuntimeFailure
from ..redact import scrub

# Every AWS API action the tool calls: RUNBOOK.md's "IAM permissions" lists exactly these, and a test
# records the operations the plan/cutover/rollback tests perform and compares them with this tuple.
IAM_ACTIONS = (
    "ssm:GetParameter",
    "ssm:GetParameterHistory",
    "ssm:PutParameter",
    "ssm:LabelParameterVersion",
    "ssm:UnlabelParameterVersion",
    "elasticache:DescribeServerlessCaches",
    "ecs:UpdateService",
)

SSM_MAX_VERSIONS = 100  # SSM keeps this many versions of a parameter
MISSING_PARAMETER_HINT = (
    "check --env and --param-prefix (default /storefront/{env}/redis): cutover and rollback repoint the parameters "
    "the apps already read and never create one, so a typo cannot look like a cutover (create it with "
    "aws ssm put-parameter if it really is missing)")
_ACCESS_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}
_CREDENTIAL_CODES = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
                     "InvalidSignatureException", "SignatureDoesNotMatch"}
_NOT_FOUND_CODES = {"NoSuchBucket", "ParameterNotFound", "ParameterVersionNotFound", "ServerlessCacheNotFoundFault",
                    "ServiceNotFoundException", "ClusterNotFoundException"}


class Clients:
    """boto3 clients, built on first use from the standard chain (profile, env, role; region from env/profile).

    Pass prebuilt clients by service name (`Clients(elasticache=client)`) to replace only their transport.
    """

    def __init__(self, **prebuilt) -> None:
        self._clients = dict(prebuilt)

    def get(self, service: str):
        if service not in self._clients:
            with aws_errors(f"AWS {service} client"):
                self._clients[service] = boto3.client(service)
        return self._clients[service]

    @property
    def ssm(self):
        return self.get("ssm")

    @property
    def elasticache(self):
        return self.get("elasticache")

    @property
    def ecs(self):
        return self.get("ecs")

    @property
    def s3(self):
        return self.get("s3")


@contextlib.contextmanager
def aws_errors(subject: str) -> Iterator[None]:
    """Translate botocore failures about `subject` into BadInput / GateRefused / RuntimeFailure with hints."""
    try:
        yield
    except MigrateError:
        raise
    except (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError) as exc:
        raise BadInput(f"{subject}: no usable AWS credentials ({type(exc).__name__})",
                       "configure the standard chain: AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                       "or an instance/task role") from None
    except bex.NoRegionError:
        raise BadInput(f"{subject}: no AWS region configured",
                       "set AWS_REGION (or AWS_DEFAULT_REGION), or use a profile that has a region") from None
    except bex.ClientError as exc:
        raise _client_error(subject, exc) from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
        raise RuntimeFailure(f"{subject}: cannot reach AWS ({scrub(str(exc))})",
                             "check the network path to the AWS endpoint (and AWS_ENDPOINT_URL if set), "
                             "then rerun") from None
    except bex.BotoCoreError as exc:
        raise RuntimeFailure(f"{subject}: AWS call failed ({scrub(str(exc))})",
                             "rerun; if it persists, run with --debug") from None


def error_code(exc: bex.ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _client_error(subject: str, exc: bex.ClientError) -> MigrateError:
    code = error_code(exc)
    message = scrub(exc.response.get("Error", {}).get("Message", "") or str(exc))
    if code in _ACCESS_CODES:
        return BadInput(f"{subject}: access denied ({exc.operation_name})",
                        "grant the role the actions in RUNBOOK.md's 'IAM permissions': " + ", ".join(IAM_ACTIONS))
    if code in _CREDENTIAL_CODES:
        return BadInput(f"{subject}: AWS rejected the credentials ({code})",
                        "refresh them (aws sso login, or new keys) and check the account and region")
    if code in _NOT_FOUND_CODES:
        return BadInput(f"{subject} does not exist ({code})", _not_found_hint(code))
    if code == "ParameterMaxVersionLimitExceeded":
        return GateRefused(f"{subject}: SSM keeps {SSM_MAX_VERSIONS} versions and the oldest one carries a label",
                           "move or remove that label (aws ssm unlabel-parameter-version --name NAME "
                           "--parameter-version OLDEST --labels LABEL), then rerun")
    if code in ("ThrottlingException", "Throttling", "TooManyUpdates"):
        return RuntimeFailure(f"{subject}: AWS throttled the request ({code})", "wait a minute and rerun")
    return RuntimeFailure(f"{subject}: {exc.operation_name} failed: {code}: {message}",
                          "rerun; if it persists, run with --debug and check the AWS console")


def _not_found_hint(code: str) -> str:
    if code == "NoSuchBucket":
        return "check the bucket name in the s3:// URI and the region (AWS_REGION)"
    if code.startswith("Parameter"):
        return MISSING_PARAMETER_HINT
    if code.startswith("ServerlessCache"):
        return ("check the cache name and the region (AWS_REGION); "
                "`aws elasticache describe-serverless-caches` lists them")
    return "check --redeploy CLUSTER/SERVICE: the ECS cluster and service names, and the region"


# --- SSM parameter history -------------------------------------------------------------------------

@dataclass(frozen=True)
class Version:
    number: int
    value: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class History:
    """A parameter's versions, oldest first, with their labels: current value, labelled versions, room left."""

    name: str
    versions: tuple[Version, ...]

    @property
    def current(self) -> Version:
        return self.versions[-1]

    @property
    def oldest(self) -> Version:
        return self.versions[0]

    @property
    def full(self) -> bool:
        """The next put must drop the oldest version, which SSM refuses while that version has labels."""
        return len(self.versions) >= SSM_MAX_VERSIONS

    def labelled(self, label: str) -> Version | None:
        return next((v for v in self.versions if label in v.labels), None)


def parameter_history(ssm, name: str) -> History | None:
    """All stored versions of a parameter (None when it does not exist), in one paginated read."""
    versions = []
    with aws_errors(f"SSM parameter {name}"):
        try:
            for page in ssm.get_paginator("get_parameter_history").paginate(Name=name, WithDecryption=True):
                versions += [Version(int(p["Version"]), p["Value"], tuple(p.get("Labels", ())))
                             for p in page["Parameters"]]
        except bex.ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
    return History(name, tuple(sorted(versions, key=lambda v: v.number))) if versions else None


def read_parameter(ssm, name: str) -> Version:
    """The value applications read now (GetParameter, as they do), with its version."""
    with aws_errors(f"SSM parameter {name}"):
        parameter = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    return Version(int(parameter["Version"]), parameter["Value"])


# --- ElastiCache Serverless ----------------------------------------------------------------------

@dataclass(frozen=True)
class ServerlessCache:
    """What plan and cutover need from describe_serverless_caches."""

    name: str
    status: str
    engine: str
    version: str
    host: str | None
    port: int | None
    storage_max_gb: int | None
    ecpu_max: int | None
    ecpu_min: int | None

    def describe(self) -> dict:
        return {"name": self.name, "status": self.status, "engine": f"{self.engine} {self.version}".strip(),
                "endpoint": f"{self.host}:{self.port}" if self.host else None,
                "storage_max_gb": self.storage_max_gb, "ecpu_per_second_max": self.ecpu_max,
                "ecpu_per_second_min": self.ecpu_min}


def describe_serverless_cache(clients: Clients, name: str) -> ServerlessCache:
    with aws_errors(f"serverless cache {name}"):
        caches = clients.elasticache.describe_serverless_caches(ServerlessCacheName=name)["ServerlessCaches"]
    if not caches:
        raise BadInput(f"serverless cache {name} does not exist", _not_found_hint("ServerlessCacheNotFoundFault"))
    cache = caches[0]
    limits = cache.get("CacheUsageLimits", {})
    endpoint = cache.get("Endpoint") or {}
    return ServerlessCache(
        name=name, status=cache.get("Status", "unknown"), engine=cache.get("Engine", ""),
        version=cache.get("FullEngineVersion") or cache.get("MajorEngineVersion", ""),
        host=endpoint.get("Address"), port=endpoint.get("Port"),
        storage_max_gb=limits.get("DataStorage", {}).get("Maximum"),
        ecpu_max=limits.get("ECPUPerSecond", {}).get("Maximum"),
        ecpu_min=limits.get("ECPUPerSecond", {}).get("Minimum"))


# --- ECS -------------------------------------------------------------------------------------------

def parse_service(text: str) -> tuple[str, str]:
    """CLUSTER/SERVICE, validated before anything is written."""
    cluster, sep, service = text.partition("/")
    if not sep or not cluster or not service or "/" in service:
        raise BadInput(f"--redeploy {text!r} is not CLUSTER/SERVICE", "e.g. --redeploy storefront-prod/web")
    return cluster, service


def tasks_of_earlier_deployments(clients: Clients, cluster: str, service: str) -> int:
    """Tasks still running from the service's deployments before the latest (the PRIMARY one): during a rolling
    redeploy, the tasks that started before it and read the SSM parameters' values of then."""
    with aws_errors(f"ECS service {cluster}/{service}"):
        reply = clients.ecs.describe_services(cluster=cluster, services=[service])
    services = reply.get("services") or []
    if not services:
        raise BadInput(f"ECS service {cluster}/{service} not found", _not_found_hint("ServiceNotFound"))
    return sum(deployment.get("runningCount", 0) for deployment in services[0].get("deployments", [])
               if deployment.get("status") != "PRIMARY")


def force_new_deployment(clients: Clients, cluster: str, service: str) -> str:
    """Restart the service's tasks: the apps read SSM only at start-up. Returns the new deployment id."""
    with aws_errors(f"ECS service {cluster}/{service}"):
        reply = clients.ecs.update_service(cluster=cluster, service=service, forceNewDeployment=True)
    deployments = reply["service"].get("deployments") or [{}]
    return deployments[0].get("id", "")
