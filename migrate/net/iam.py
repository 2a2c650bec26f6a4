"""IAM authentication for ElastiCache: a fresh SigV4 token for every new connection.

An IAM token is botocore's SigV4 query-presigned `GET https://<cache-name>/?Action=connect&User=<user>
[&ResourceType=ServerlessCache]` for service `elasticache`, valid 900 s, with the scheme stripped. It is
the password of `AUTH <user> <token>`. A token only opens a connection, and ElastiCache closes IAM
connections after 12 hours, so a token is signed per connect (never cached, never stored), and the raw
connections reconnect before that limit (`renew_after_seconds`).

Credentials and region come from boto3's standard chain (environment, profile, instance or task role).
botocore is imported lazily: commands without IAM never load it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlencode

from redis.credentials import CredentialProvider

from ..errors import BadInput

SERVERLESS = "serverless"
REPLICATION_GROUP = "replication-group"
KINDS = (SERVERLESS, REPLICATION_GROUP)
TOKEN_SECONDS = 900
RENEW_AFTER_SECONDS = 11 * 3600


def renew_after_seconds() -> float:
    """ElastiCache closes an IAM-authenticated connection after 12 hours: reconnect (with a new token) after
    11. REDIS_MIGRATE_IAM_RENEW_SECONDS shortens it (the tests renew every fraction of a second)."""
    return float(os.environ.get("REDIS_MIGRATE_IAM_RENEW_SECONDS") or RENEW_AFTER_SECONDS)


@dataclass(frozen=True)
class IamCache:
    """What the operator named: the cache (serverless) or replication group the tokens are signed for."""

    name: str
    kind: str = SERVERLESS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadInput(f"IAM cache type {self.kind!r} is unknown", f"use one of: {', '.join(KINDS)}")
        if not self.name or "/" in self.name or ":" in self.name:
            raise BadInput(f"IAM cache name {self.name!r} is not a cache name",
                           "give the serverless cache's or replication group's name (not its DNS endpoint)")


@dataclass(frozen=True)
class IamAuth:
    """An endpoint's IAM login: the cache, and the ElastiCache user (the URL's user name)."""

    cache: IamCache
    user: str

    def token(self) -> str:
        """A token signed now: valid for 900 s, for one connection's AUTH."""
        return _signer().sign(self.cache, self.user)

    def credentials(self) -> tuple[str, str]:
        return self.user, self.token()

    def describe(self) -> dict:
        return {"cache": self.cache.name, "type": self.cache.kind, "user": self.user}


def connect_url(cache: IamCache, user: str) -> str:
    """The request a token presigns; ResourceType only for a serverless cache."""
    query = {"Action": "connect", "User": user}
    if cache.kind == SERVERLESS:
        query["ResourceType"] = "ServerlessCache"
    return f"https://{cache.name}/?{urlencode(query)}"


class _Signer:
    """botocore's SigV4 query signer over the standard chain's credentials (refreshed by botocore when
    they are temporary: a role's credentials rotate during a long run)."""

    def __init__(self) -> None:
        import botocore.session
        from botocore.model import ServiceId
        from botocore.signers import RequestSigner

        self.session = session = botocore.session.get_session()  # the signer holds its events weakly
        self.region = session.get_config_variable("region")
        if not self.region:
            raise BadInput("IAM authentication needs an AWS region, and none is configured",
                           "set AWS_REGION / AWS_DEFAULT_REGION (or the profile's region) to the cache's region")
        credentials = session.get_credentials()
        if credentials is None:
            raise BadInput("IAM authentication needs AWS credentials, and the standard chain found none",
                           "set AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run with a role "
                           "(instance profile, ECS task role) allowed elasticache:Connect")
        self.signer = RequestSigner(ServiceId("elasticache"), self.region, "elasticache", "v4", credentials,
                                    session.get_component("event_emitter"))

    def sign(self, cache: IamCache, user: str) -> str:
        request = {"method": "GET", "url": connect_url(cache, user), "body": {}, "headers": {}, "context": {}}
        try:
            url = self.signer.generate_presigned_url(request, operation_name="connect", expires_in=TOKEN_SECONDS,
                                                     region_name=self.region)
        except Exception as exc:  # noqa: BLE001 - botocore's credential errors (expired SSO, bad profile) are many
            raise BadInput(f"IAM authentication: signing the token failed ({type(exc).__name__})",
                           "check the AWS credentials of the standard chain (profile, SSO login, role)") from None
        return url.removeprefix("https://")


_SIGNERS: dict[int, _Signer] = {}


def _signer() -> _Signer:
    """One signer per process (children are forked: each builds its own botocore session)."""
    pid = os.getpid()
    if pid not in _SIGNERS:
        _SIGNERS.clear()
        _SIGNERS[pid] = _Signer()
    return _SIGNERS[pid]


class IamCredentialProvider(CredentialProvider):
    """redis-py asks it on every connect (and reconnect): a fresh token each time."""

    def __init__(self, auth: IamAuth) -> None:
        self.auth = auth

    def get_credentials(self) -> tuple[str, str]:
        return self.auth.credentials()
