"""One decision vocabulary and one evaluator, shared by the proxy and ``mcp-guard explain``.

``evaluate`` is the pure part of deciding a request: the chain's expiry, the policies, and every
grant link, for a tool, a resource or a prompt.  Revocation (state store), approval (a human),
limits (counters) and the audit come after it, in the proxy's call pipeline.  A refusal is a value
(``Verdict``) carrying the one sentence the caller sees, never an exception.

Pure: no asyncio, no MCP, no telemetry.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_guard.errors import ConfigError
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext
from mcp_guard.policy import NOTHING, Brought, Decision, Effect, FlowView, PolicySet, load_sources
from mcp_guard.policy._conditions import URI_SLOT

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain
    from mcp_guard.identity import Principal




class Outcome(enum.StrEnum):
    """``mcp_guard.decision`` on spans and ``decision`` in the audit log (the string values)."""

    ALLOW = "allow"
    DENY = "deny"
    APPROVAL_REQUIRED = "approval_required"
    APPROVED = "approved"
    REJECTED = "rejected"
    BUDGET_EXHAUSTED = "budget_exhausted"
    EXPIRED = "expired"
    UNKNOWN = "unknown"  # hidden or nonexistent: answered exactly like a name that does not exist


FORWARDED = frozenset((Outcome.ALLOW, Outcome.APPROVED))
# read per call: globals (``Effect.DENY`` is an enum metaclass hook on 3.11)
_DENY_EFFECT, _APPROVE_EFFECT, _RESOURCE = Effect.DENY, Effect.APPROVE, Kind.RESOURCE


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard decided about one request."""

    decision: Outcome
    reason: str
    policy_ids: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    approver: str | None = None
    # Human approval, set on approved/rejected verdicts that went through an approver:
    approval_channel: str | None = None  # elicitation | input_required | queue | remembered | none
    approval_answer: str | None = None  # approve | reject | decline | cancel | timeout | invalid_state | error
    approval_wait: float | None = None  # seconds the call waited for the human
    approval_id: str | None = None  # queue id (``mcp-guard approvals``) or the sealed state's nonce
    # 2026-07-28 approval: the ``InputRequiredResult`` answered instead of forwarding (approval_required)
    input_required: Mapping[str, Any] | None = None
    # serve, handshake era: the ``-32042`` error data pointing the caller at the approval page
    url_elicitation: Mapping[str, Any] | None = None
    # what the request brings into the session if it is forwarded (labels: entries, less endorsed sources)
    brings: Brought = NOTHING

    @property
    def forward(self) -> bool:
        return self.decision in FORWARDED


def is_visible(
    policies: PolicySet,
    chain: GrantChain | None,
    who: Principal,
    name: str,
    annotations: Mapping[str, Any] | None,
    kind: Kind = Kind.TOOL,
    *,
    judge_uri: bool = True,
) -> bool:
    """Discovery: some allow/approve rule could apply, no unconditional deny, every link permits it."""
    if chain is not None and not chain.permits(kind, name):
        return False
    return policies.visible(who, name, annotations, kind=kind, judge_uri=judge_uri)


def evaluate(
    policies: PolicySet,
    chain: GrantChain | None,
    who: Principal,
    name: str,
    args: Mapping[str, Any],
    annotations: Mapping[str, Any] | None,
    now: float | None,
    *,
    kind: Kind = Kind.TOOL,
    paths: PathContext | None = None,
    flow: FlowView | None = None,
) -> Verdict:
    """Policies AND every chain link, for ``name`` (``UPSTREAM/TOOL``, ``UPSTREAM/URI`` or
    ``UPSTREAM/PROMPT``).  deny beats approve beats allow; an expired chain is ``expired``
    (``now`` None: the caller checked the chain's times for this request already).
    ``flow`` is the session's labels and content; a request that would bring a label beyond the
    chain's label ceiling is denied."""
    if chain is not None and now is not None:
        late = chain.check_time(now)
        if late is not None:
            return Verdict(Outcome.EXPIRED, f"mcp-guard denied {name}: {late}")
    decision: Decision = policies.decide(who, name, args, annotations, kind=kind, paths=paths, flow=flow)
    if decision.effect is _DENY_EFFECT:
        return Verdict(Outcome.DENY, decision.reason, decision.policy_ids, decision.rule_ids)
    needs_approval = decision.effect is _APPROVE_EFFECT
    brings = brought(policies, chain, who, name, args, kind, paths)
    if chain is not None:
        check = chain.check_call(name, args, kind, paths=paths)
        if not check.allowed:
            return Verdict(Outcome.DENY, f"mcp-guard denied {name}: {check.reason}", decision.policy_ids, decision.rule_ids)
        needs_approval = needs_approval or check.approval_required
        ceiling = chain.flow.ceiling
        beyond = sorted(brings.labels - ceiling) if ceiling is not None else []
        if beyond:
            allowed = ", ".join(sorted(ceiling or ())) or "none"
            return Verdict(Outcome.DENY, f"mcp-guard denied {name}: it would bring `{'`, `'.join(beyond)}` into this session, "
                           f"beyond the grant's label ceiling ({allowed})", decision.policy_ids, decision.rule_ids)
    if needs_approval:
        note = "policy " + ", ".join(decision.policy_ids) if decision.policy_ids else "grant chain"
        reason = f"mcp-guard needs a human to approve {name} ({note})"
        if "; this session holds" in decision.reason:
            reason += decision.reason[decision.reason.index("; this session holds"):]
        return Verdict(Outcome.APPROVAL_REQUIRED, reason, decision.policy_ids, decision.rule_ids, brings=brings)
    if brings is NOTHING:
        return _allowed(decision)
    return Verdict(Outcome.ALLOW, decision.reason, decision.policy_ids, decision.rule_ids, brings=brings)


_ALLOWED: dict[int, tuple[Decision, Verdict]] = {}  # id(decision) -> (that decision, its allow verdict)
_ALLOWED_MAX = 4096


def _allowed(decision: Decision) -> Verdict:
    """The allow verdict of ``decision`` when the request brings nothing: built once per decision
    (the engine hands back the same Decision for the same rules and name), so an allowed call
    builds no Verdict, rule ids or policy ids of its own.  The entry holds the decision itself,
    so its id cannot be reused while the entry lives."""
    known = _ALLOWED.get(id(decision))
    if known is not None and known[0] is decision:
        return known[1]
    if len(_ALLOWED) >= _ALLOWED_MAX:
        _ALLOWED.clear()
    verdict = Verdict(Outcome.ALLOW, decision.reason, decision.policy_ids, decision.rule_ids)
    _ALLOWED[id(decision)] = (decision, verdict)
    return verdict


def brought(policies: PolicySet, chain: GrantChain | None, who: Principal, name: str, args: Mapping[str, Any],
            kind: Kind, paths: PathContext | None) -> Brought:
    """What a forwarded request brings: its ``labels:`` entries, less ``untrusted`` when the grant
    endorses the request as a source the principal vouched for."""
    labels = policies.labels
    # no ``labels:`` entries (their method answers the same): no call, no URI arguments built
    brings = labels.brings(who, kind, name, args, paths, _uri_args(kind, name)) if labels.entries else NOTHING
    if chain is not None and chain.flow.endorse_sources and "untrusted" in brings.labels \
            and endorsed_source(chain.flow.endorse_sources, who, kind, name, args, paths):
        brings = brings.without("untrusted")
    return brings



def _uri_args(kind: Kind, name: str) -> Mapping[str, Any] | None:
    return None if kind is not _RESOURCE else {URI_SLOT: name.partition("/")[2]}


@functools.lru_cache(maxsize=256)
def _sources(key: str) -> PolicySet | None:
    """Endorsed sources compiled as ``labels:`` entries (the same selectors and conditions)."""
    entries = [{**{k: v for k, v in s.items()}, "brings": ["endorsed"]} for s in json.loads(key)]
    try:
        return load_sources([("<grant endorse_sources>", json.dumps({"version": 1, "labels": entries}))])
    except ConfigError:
        return None  # a selector the guard cannot read endorses nothing (fail closed)


def endorsed_source(sources: Sequence[Mapping[str, Any]], who: Principal, kind: Kind, name: str, args: Mapping[str, Any],
                    paths: PathContext | None) -> bool:
    """Whether a request is one of the grant's endorsed sources."""
    compiled = _sources(json.dumps(list(sources), sort_keys=True))
    if compiled is None:
        return False
    got = compiled.labels.brings(who, kind, name, args, paths, _uri_args(kind, name))
    return "endorsed" in got.labels


__all__ = ["FORWARDED", "Kind", "Outcome", "PathContext", "Verdict", "brought", "endorsed_source", "evaluate", "is_visible"]
