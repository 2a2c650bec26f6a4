"""Typed errors. Each carries a hint telling the operator how to fix it, and an exit code.

Exit codes: 0 success, 1 differences found or a safety gate refused, 2 bad input,
3 a runtime failure (the run can be resumed by rerunning the same command).
"""

from __future__ import annotations


class MigrateError(Exception):
    """Base error: a message that says what is wrong and a hint that says how to fix it."""

    exit_code = 3

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class BadInput(MigrateError):
    """The operator gave something wrong: URL, password, TLS, flags, run dir, dump files."""

    exit_code = 2


class AuthenticationFailed(BadInput):
    """A server refused the login: a wrong or rotated password, an expired IAM token, an unknown user.
    At the start or on any reconnect, it is never retried: waiting cannot fix a credential."""


class Unreachable(BadInput):
    """A server could not be reached or the connection failed. Bad input when a stage starts (wrong host,
    port or TLS); mid-stage, dump and replay reconnect and retry instead."""


class GateRefused(MigrateError):
    """A safety gate refused to go on (non-empty target, stale verify, foreign SSM change)."""

    exit_code = 1


class DifferencesFound(MigrateError):
    """Verify found differences between source and target."""

    exit_code = 1


class RuntimeFailure(MigrateError):
    """Something failed while running (target out of memory, retries exhausted). Rerun to resume."""

    exit_code = 3
