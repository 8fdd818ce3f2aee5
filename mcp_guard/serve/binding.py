"""``serve``: what a session is bound to, and whose sessions count together.

A session belongs to the whole verified principal that opened it (issuer, user, every agent of
the chain, purpose, verified flag), and every later request on it must come from exactly that
principal.  Each key is the canonical JSON of a tuple, never a joined string: a user claim that
itself reads ``alice@example.com > agent:planner`` cannot spell another principal's chain.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import orjson

from mcp_guard.identity import Principal

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain


def _key(*parts: object) -> str:
    return orjson.dumps(parts).decode()


def session_binding(issuer: str | None, who: Principal, token_digest: str | None = None) -> str:
    """What a session (and a 2026-07-28 caller's shared session) is bound to: the whole principal,
    and for a grant chain also the token itself (a chain is its own identity).  An OAuth caller
    that refreshes its access token keeps its session; another purpose does not share it."""
    kind = "grant" if token_digest is not None else "oauth"
    return _key(kind, issuer, token_digest, who.user, who.agents, who.purpose, who.verified)


def principal_key(who: Principal) -> str:
    """A principal's user and agent chain: what ``max_sessions_per_principal`` and the rate
    limits count by."""
    return _key(who.user, who.agents)


def store_key(key: str) -> str:
    """A short, store-safe form of a key (limits in the state store)."""
    return "p" + hashlib.sha256(key.encode()).hexdigest()[:32]


def root_key(issuer: str | None, who: Principal, chain: GrantChain | None) -> str:
    """The delegating root a principal descends from: who signed the root (the OAuth issuer, or the
    root grant's issuer), its user and its first agent.  Every sub-agent an agent mints below it,
    and every root the same issuer signs for that user and agent, count together against
    ``max_sessions_per_root``."""
    if chain is not None:
        root = chain.links[0]
        return _key("grant", root.iss, root.user, root.agent)
    return _key("oauth", issuer, who.user, who.agents[0] if who.agents else "")
