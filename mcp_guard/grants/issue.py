"""Minting root grants and delegating narrower links.

``delegate`` builds the child link and runs the very checks the verifier runs, so a widening
request fails here with the field it would widen instead of producing a chain the guard rejects.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_guard.grants import errors as E
from mcp_guard.grants.errors import GrantError
from mcp_guard.grants.flow import NONE as NO_FLOW
from mcp_guard.grants.flow import FlowClaims, effective, parse_flow
from mcp_guard.grants.jws import sign
from mcp_guard.grants.keys import public_jwk, raw_public
from mcp_guard.grants.model import (
    AGENT_PREFIX,
    DEFAULT_AUDIENCE,
    DETAIL_TYPE,
    MEMBER,
    USER_PREFIX,
    Link,
    check_pattern,
    covers,
    parse_link,
)
from mcp_guard.grants.verify import MAX_LINKS, check_narrowing, link_hash, verify_links
from mcp_guard.kinds import Kind

Tools = Iterable[str] | Mapping[str, Mapping[str, Any]]


def new_jti() -> str:
    """128 random bits, base64url, never starting with ``-`` (so an id is never mistaken for a
    command-line option, e.g. in ``mcp-guard grant revoke ID``)."""
    while (jti := secrets.token_urlsafe(16))[0] == "-":
        pass
    return jti


def _kind_entries(patterns: Tools | None, kind: Kind) -> dict[str, dict[str, Any]]:
    """Entries of one kind from a list of patterns or a mapping pattern -> entry object."""
    if patterns is None:
        return {}
    if isinstance(patterns, str):
        raise TypeError(f"{MEMBER[kind]} must be a list of patterns, not one string")
    if isinstance(patterns, Mapping):
        return {check_pattern(p, kind): dict(e) for p, e in patterns.items()}
    return {check_pattern(p, kind): {} for p in patterns}


def _entries(tools: Tools, approve: Iterable[str], tool_args: Mapping[str, Any] | None,
             others: Mapping[Kind, Mapping[str, Any]] = {}) -> dict[str, dict[str, Any]]:
    """Per-tool entries from a list of patterns (or explicit entry objects), ``approve`` and ``tool_args``."""
    entries = _kind_entries(tools, Kind.TOOL)
    if not entries and not any(others.values()):
        raise GrantError(E.MALFORMED, "tools: a grant must name at least one UPSTREAM/TOOL (or a resource or prompt)")
    for pattern in approve:
        check_pattern(pattern)
        if pattern not in entries and not any(covers(p, pattern) for p in entries):
            raise GrantError(E.WIDENED_TOOLS, f"approve: {pattern} is not among the granted tools")
        entries.setdefault(pattern, {})["approval"] = "always"
    for pattern, schema in (tool_args or {}).items():
        if check_pattern(pattern) not in entries:
            raise GrantError(E.MALFORMED, f"tool_args: {pattern} is not one of the granted tool patterns")
        entries[pattern]["arguments"] = schema
    return entries


def _claims(
    *,
    iss: str,
    user: str,
    agent: str,
    aud: str,
    now: float,
    exp: float,
    nbf: float,
    purpose: str | None,
    depth: int,
    agent_key: Ed25519PublicKey | None,
    entries: Mapping[str, Mapping[str, Any]],
    max_calls: int | None,
    others: Mapping[Kind, Mapping[str, Mapping[str, Any]]],
    act_parent: Mapping[str, Any] | None = None,
    parent: Link | None = None,
    flow: FlowClaims = NO_FLOW,
) -> dict[str, Any]:
    if not isinstance(depth, int) or depth < 0:
        raise GrantError(E.MALFORMED, "depth: must be a non-negative integer")
    if depth > 0 and agent_key is None:
        raise GrantError(E.MALFORMED, "agent_key: a grant that may be delegated further must name the agent's public key")
    if agent.startswith(AGENT_PREFIX):
        agent = agent[len(AGENT_PREFIX):]
    act: dict[str, Any] = {"sub": AGENT_PREFIX + agent, "sub_profile": "ai_agent"}
    if act_parent is not None:
        act["act"] = dict(act_parent)
    claims: dict[str, Any] = {
        "iss": iss,
        "sub": USER_PREFIX + user,
        "aud": aud,
        "jti": new_jti(),
        "iat": math.floor(now),
        "nbf": math.floor(nbf),
        "exp": exp,
        "act": act,
        "delegation": {"max_depth": depth},
        "authorization_details": [
            {"type": DETAIL_TYPE, "tools": {p: dict(e) for p, e in entries.items()},
             **{MEMBER[k]: {p: dict(e) for p, e in v.items()} for k, v in others.items() if v},
             **({"max_calls": max_calls} if max_calls is not None else {}),
             **flow.to_json()}
        ],
    }
    if agent_key is not None:
        claims["cnf"] = {"jwk": public_jwk(agent_key)}
    if purpose is not None:
        claims["purpose"] = purpose
    if parent is not None:
        claims["parent_jti"] = parent.jti
        claims["parent_hash"] = link_hash(parent.compact)
    return claims


def _flow(labels: Iterable[str] | None, ceiling: Iterable[str] | None, endorse: Iterable[str] | None,
          sources: Iterable[Mapping[str, Any]] | None) -> FlowClaims:
    """The flow members of a new link (None = not stated: inherited from the parent)."""
    raw = {k: [dict(x) if isinstance(x, Mapping) else x for x in v]
           for k, v in (("labels", labels), ("label_ceiling", ceiling), ("endorse", endorse), ("endorse_sources", sources)) if v is not None}
    return parse_flow(raw)


def issue_grant(
    key: Ed25519PrivateKey,
    issuer: str,
    user: str,
    agent: str,
    tools: Tools,
    *,
    agent_key: Ed25519PublicKey | None = None,
    purpose: str | None = None,
    ttl: float = 3600,
    depth: int = 0,
    max_calls: int | None = None,
    approve: Iterable[str] = (),
    audience: str = DEFAULT_AUDIENCE,
    now: float | None = None,
    tool_args: Mapping[str, Any] | None = None,
    resources: Tools | None = None,
    prompts: Tools | None = None,
    labels: Iterable[str] | None = None,
    label_ceiling: Iterable[str] | None = None,
    endorse: Iterable[str] | None = None,
    endorse_sources: Iterable[Mapping[str, Any]] | None = None,
) -> str:
    """A root grant: ``issuer`` (a name in the guard's ``trust.issuers``) lets ``agent`` act for ``user``.

    ``tools`` is a list of ``UPSTREAM/TOOL`` patterns or a mapping pattern -> entry
    (``approval``, ``max_calls``, ``arguments``); ``depth`` is how many further hops may follow.
    ``resources`` (``UPSTREAM/URI_GLOB``) and ``prompts`` (``UPSTREAM/PROMPT``) take the same
    forms; a grant without them permits no resource and no prompt.  ``labels``, ``label_ceiling``,
    ``endorse`` and ``endorse_sources`` are the flow claims (docs/grants.md).
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise GrantError(E.BAD_KEY, "grants are signed with Ed25519 keys only")
    now = time.time() if now is None else now
    if user.startswith(USER_PREFIX):
        user = user[len(USER_PREFIX):]
    others = {Kind.RESOURCE: _kind_entries(resources, Kind.RESOURCE), Kind.PROMPT: _kind_entries(prompts, Kind.PROMPT)}
    claims = _claims(
        iss=issuer, user=user, agent=agent, aud=audience, now=now, exp=math.ceil(now + ttl), nbf=now,
        purpose=purpose, depth=depth, agent_key=agent_key, entries=_entries(tools, approve, tool_args, others),
        max_calls=max_calls, others=others, flow=_flow(labels, label_ceiling, endorse, endorse_sources),
    )
    effective([parse_link(0, "", claims).flow])  # the same checks the verifier applies
    return sign(claims, key)


def delegate(
    chain_token: str,
    holder_key: Ed25519PrivateKey,
    agent: str,
    tools: Tools,
    *,
    agent_key: Ed25519PublicKey | None = None,
    ttl: float = 600,
    depth: int = 0,
    max_calls: int | None = None,
    approve: Iterable[str] = (),
    now: float | None = None,
    tool_args: Mapping[str, Any] | None = None,
    resources: Tools | None = None,
    prompts: Tools | None = None,
    labels: Iterable[str] | None = None,
    label_ceiling: Iterable[str] | None = None,
    endorse: Iterable[str] | None = None,
    endorse_sources: Iterable[Mapping[str, Any]] | None = None,
) -> str:
    """``chain_token`` plus one narrower link for ``agent``, signed with the current holder's key.

    Omitted limits are inherited (the parent's approval and call budgets), expiry is clamped to
    the parent's; anything that would widen raises ``GrantError`` naming the field.
    """
    now = time.time() if now is None else now
    links = verify_links(chain_token.strip(), None, MAX_LINKS)
    if len(links) >= MAX_LINKS:
        raise GrantError(E.TOO_MANY_LINKS, f"the chain already has {len(links)} links; at most {MAX_LINKS} are accepted")
    parent = links[-1]
    if parent.max_depth < 1 or parent.holder_key is None:
        raise GrantError(E.DEPTH_NOT_DECREASING, f"depth: the chain's last link (agent {parent.agent}) may not delegate further")
    if not isinstance(holder_key, Ed25519PrivateKey) or raw_public(holder_key.public_key()) != raw_public(parent.holder_key):
        raise GrantError(E.WRONG_HOLDER_KEY, f"key: this is not the key of agent {parent.agent}, who holds the chain")
    expires = min(link.exp for link in links)
    if now >= expires:
        raise GrantError(E.EXPIRED, "the chain has expired; nothing can be delegated from it")
    others = {Kind.RESOURCE: _kind_entries(resources, Kind.RESOURCE), Kind.PROMPT: _kind_entries(prompts, Kind.PROMPT)}
    entries = _entries(tools, approve, tool_args, others)
    for kind, of_kind in ((Kind.TOOL, entries), *others.items()):
        for pattern, entry in of_kind.items():  # inherit what the parent requires unless stated
            covering = [p for p in parent.of(kind) if covers(p.pattern, pattern, kind)]
            if "approval" not in entry and any(p.approval == "always" for p in covering):
                entry["approval"] = "always"
            limits = [p.max_calls for p in covering if p.max_calls is not None]
            if "max_calls" not in entry and limits:
                entry["max_calls"] = min(limits)
    claims = _claims(
        iss=AGENT_PREFIX + parent.agent, user=parent.user, agent=agent, aud=parent.aud, now=now,
        exp=min(math.ceil(now + ttl), math.floor(parent.exp)), nbf=max(math.floor(now), math.ceil(parent.nbf)),
        purpose=parent.purpose, depth=depth, agent_key=agent_key, entries=entries,
        max_calls=parent.max_calls if max_calls is None else max_calls, act_parent=parent.act, parent=parent,
        others=others, flow=_flow(labels, label_ceiling, endorse, endorse_sources),
    )
    child = parse_link(len(links), "", claims)
    check_narrowing(parent, child)
    effective([link.flow for link in links]).then(child.flow, f"link {len(links)}")
    return f"{chain_token.strip()}~{sign(claims, holder_key)}"
