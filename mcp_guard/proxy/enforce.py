"""The decision pipeline for one ``tools/call``: grant chain, policies, approval, limits.

Every refusal is a value (``Verdict``) carrying the one sentence the caller sees; only the session
turns it into a wire answer.  Order matters: expiry and revocation of the
chain, then the conjunction of policies and every chain link, then approval, then limits (only
calls that would be forwarded are counted).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mcp_guard.identity import Principal
from mcp_guard.policy import Decision, Effect, PolicySet
from mcp_guard.proxy.catalogue import ToolEntry

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain
    from mcp_guard.state import StateStore


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard decided about one call, in the vocabulary of the ``mcp_guard.decision`` span attribute (docs/telemetry.md)."""

    decision: str  # allow | deny | approval_required | approved | rejected | budget_exhausted | expired
    reason: str
    policy_ids: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    approver: str | None = None
    # Human approval (docs/approvals.md), set on approved/rejected verdicts that went through an approver:
    approval_channel: str | None = None  # elicitation | input_required | queue | remembered | none
    approval_answer: str | None = None  # approve | reject | decline | cancel | timeout | invalid_state | error
    approval_wait: float | None = None  # seconds the call waited for the human
    approval_id: str | None = None  # queue id (``mcp-guard approvals``) or the sealed state's nonce

    @property
    def forward(self) -> bool:
        return self.decision in ("allow", "approved")


def is_visible(policies: PolicySet, chain: GrantChain | None, who: Principal, entry: ToolEntry) -> bool:
    """Discovery: some allow/approve rule could apply, no unconditional deny, every link permits it."""
    if entry.held:
        return False  # pinning: enforce and the tool is new or changed since review
    if chain is not None and not chain.permits_tool(entry.qualified):
        return False
    return policies.visible(who, entry.qualified, entry.annotations)


def decide(
    policies: PolicySet,
    chain: GrantChain | None,
    who: Principal,
    entry: ToolEntry,
    args: Mapping[str, Any],
    now: float,
) -> Verdict:
    """The pure part: policies AND every chain link.  Limits and approval come after."""
    if chain is not None:
        late = chain.check_time(now)
        if late is not None:
            return Verdict("expired", f"mcp-guard denied {entry.qualified}: {late}")
    decision: Decision = policies.decide(who, entry.qualified, args, entry.annotations)
    if decision.effect is Effect.DENY:
        return Verdict("deny", decision.reason, decision.policy_ids, decision.rule_ids)
    needs_approval = decision.effect is Effect.APPROVE
    if chain is not None:
        check = chain.check_call(entry.qualified, args)
        if not check.allowed:
            return Verdict("deny", f"mcp-guard denied {entry.qualified}: {check.reason}", decision.policy_ids, decision.rule_ids)
        needs_approval = needs_approval or check.approval_required
    if needs_approval:
        return Verdict(
            "approval_required",
            f"mcp-guard needs a human to approve {entry.qualified} ({_policy_note(decision)})",
            decision.policy_ids,
            decision.rule_ids,
        )
    return Verdict("allow", decision.reason, decision.policy_ids, decision.rule_ids)


def _policy_note(decision: Decision) -> str:
    if decision.policy_ids:
        return "policy " + ", ".join(decision.policy_ids)
    return "grant chain"


async def check_limits(
    store: StateStore,
    policies: PolicySet,
    chain: GrantChain | None,
    who: Principal,
    entry: ToolEntry,
    session_id: str,
    verdict: Verdict,
) -> Verdict:
    """Rate limits, per-session budgets and every link's call budget; counts only if all pass."""
    from mcp_guard.state import Counter

    counters: list[Counter] = []
    for limit in policies.limits(who, entry.qualified):
        if limit.per_minute is not None and not await store.rate(f"rate:{session_id}:{limit.key}", limit.per_minute):
            return replace(
                verdict,
                decision="budget_exhausted",
                reason=f"mcp-guard denied {entry.qualified}: rate limit of {limit.per_minute} calls per minute reached ({limit.key.split('/')[0]} limits)",
            )
        if limit.per_session is not None:
            counters.append(Counter(f"session:{session_id}:{limit.key}", limit.per_session, time.time() + 86400))
    if chain is not None:
        counters.extend(Counter(b.key, b.limit, b.expires_at) for b in chain.budgets(entry.qualified))
    if counters:
        exhausted = await store.consume(counters)
        if exhausted is not None:
            what = "the grant's call budget" if exhausted.startswith("grant:") or not exhausted.startswith("session:") else "the session's call budget"
            return replace(verdict, decision="budget_exhausted", reason=f"mcp-guard denied {entry.qualified}: {what} is used up")
    return verdict
