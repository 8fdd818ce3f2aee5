"""``serve``'s sessions: one hub owns the upstream connections; each caller gets a session of its
own on it (``ServeSessions``).  Assembling a guard from its configuration is ``app.py``'s job."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mcp_guard.errors import AuditError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era, HostTransport, Message
from mcp_guard.policy import PolicySet
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.handshake import HostProfile
from mcp_guard.proxy.hub import Hub
from mcp_guard.proxy.session import GuardSession, SpeaksFor

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain

log = logging.getLogger("mcp_guard")


# what the serve hub tells its upstreams it can do: each question is put to the caller that caused it
# (refused when that caller cannot answer it, or when no single caller did)
RELAYED_TO_CALLERS: Message = {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}


class ServeSessions:
    """``serve``: one hub owns the upstreams; each caller gets a session of its own (its own
    verified principal) sharing them.  The transport sees only this (``serve.asgi.Sessions``)."""

    def __init__(self, ctx: GuardContext) -> None:
        self.ctx = ctx
        ctx.approval_queue_only = True  # the bearer caller holds every other channel: it must not approve itself
        # the hub itself never talks to a host: it tells its upstreams what the callers can be asked
        self.hub = Hub(ctx, HostProfile(era=Era.MODERN, client_capabilities=dict(RELAYED_TO_CALLERS)), shared=True)

    async def start(self) -> None:
        await self.hub.start()

    async def close(self) -> None:
        await self.hub.close()

    def new(self, host: HostTransport, chain: GrantChain | None, principal: Principal, limit_scope: str,
            session_key: str = "") -> GuardSession:
        """``limit_scope`` is what per_minute/per_session limits count by: the principal, so a new
        session (or another replica) does not start them afresh; ``session_key`` names the session
        alike on every replica (what approvals are remembered for)."""
        return GuardSession(self.ctx, host, hub=self.hub, speaks_for=SpeaksFor(principal, chain, limit_scope, session_key))

    def refused(self, principal: Principal, method: str | None, reason: str, session: str | None = None) -> None:
        """One audit record (decision ``deny``, no target) for a request the transport refused
        before any session handled it: a session another principal opened, a session cap."""
        audit = self.ctx.audit
        if audit is None:
            return
        try:
            audit.append({"principal": list(principal.chain), "user": principal.user, "agent": principal.agent,
                          "verified": principal.verified, "purpose": principal.purpose, "grant_id": principal.grant_id,
                          "session": session, "method": method, "kind": None, "upstream": None, "decision": "deny",
                          "policy_ids": [], "rule_ids": [], "reason": reason, "approver": None})
        except AuditError as exc:  # refused anyway: the failure is logged
            log.error("audit write failed: %s", exc)

    async def policies_changed(self, previous: PolicySet | None = None) -> None:
        """After a reload: each caller is told which of its lists changed (``previous`` is the
        policy set the reload replaced)."""
        await self.hub.policies_changed(previous)

    def tool_names(self) -> list[str]:
        return self.hub.tool_names()


__all__ = ["ServeSessions"]
