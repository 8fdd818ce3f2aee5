"""One error tree.  Every message is a user-facing sentence; the CLI maps classes to exit codes."""

from __future__ import annotations

from typing import Any


class GuardError(Exception):
    """Base of every error mcp-guard raises on purpose.  ``str(e)`` is shown to people as is."""

    exit_code: int = 1


class ConfigError(GuardError):
    """guard.yaml or a policy file is invalid.  ``problems`` holds ``file:line:col: message`` lines."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]


class UpstreamError(GuardError):
    """An upstream server failed to start, crashed, hung or answered nonsense."""


class LoginRequired(UpstreamError):
    """An OAuth upstream needs a person to authorize, and nobody is there (run without ``$BROWSER``)."""


class AuthRefused(UpstreamError):
    """OAuth discovery or a token exchange went somewhere (or returned something) the guard refuses."""


class StateError(GuardError):
    """The state store (budgets, rate limits, revocations, approvals) is unreachable or corrupt."""


class AuditError(GuardError):
    """The audit log could not be written; the guard refuses the call (fail closed)."""


class RpcError(GuardError):
    """A JSON-RPC error answer (from an upstream, or one the guard gives): ``code`` and the one
    sentence the caller sees; ``to_message`` is the wire answer for a request id."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_message(self, request_id: Any) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return {"jsonrpc": "2.0", "id": request_id, "error": err}
