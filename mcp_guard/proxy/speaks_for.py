"""Whom a session speaks for: the principal its requests are decided, limited and audited as.

``serve``: the verified bearer token's principal, handed to the caller's session as data
(``SpeaksFor``), never the config identity or the client's own name.  ``run``: the grant chain the
guard was started with, or else the config identity, whose agent defaults to the name the host
gives itself (``SelfAsserted``: recorded as not verified)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcp_guard.config import IdentityConfig
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Message

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain


@dataclass(frozen=True)
class SpeaksFor:
    """Who a ``serve`` caller's session speaks for: the verified bearer token's principal (a grant
    chain or an OAuth access token); ``limit_scope`` is what per_minute/per_session limits count by
    (the principal, so a new session or another replica does not start them afresh)."""

    principal: Principal
    chain: GrantChain | None
    limit_scope: str
    session_key: str = ""  # the session's name on every replica (a digest of its table key, serve/table.py)


class SelfAsserted:
    """``run`` without a grant chain: ``identity.user`` and ``identity.agent``, the agent defaulting
    to the host's ``clientInfo.name``; built once per agent name, not per request."""

    def __init__(self, identity: IdentityConfig) -> None:
        self._identity = identity
        self._known: tuple[str, Principal] | None = None
        self._seen: tuple[Message, Principal] | None = None  # the clientInfo object last asked about, per request

    def principal(self, client_info: Message) -> Principal:
        seen = self._seen
        if seen is not None and seen[0] is client_info:  # the session's clientInfo, unchanged since the last request
            return seen[1]
        ident = self._identity
        agent = ident.agent or str(client_info.get("name") or "unknown-agent")
        known = self._known
        if known is None or known[0] != agent:
            known = self._known = (agent, Principal(user=ident.user or "unknown-user", agents=(agent,), purpose=ident.purpose, verified=False))
        self._seen = (client_info, known[1])
        return known[1]


__all__ = ["SelfAsserted", "SpeaksFor"]
