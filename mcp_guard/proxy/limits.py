"""Limits of a decided request: rate limits, per-session budgets and every grant link's budget.

The last step of the call pipeline before the audit (``proxy/pipeline.py``): only requests that
would be forwarded are counted, and a refusal is a ``Verdict`` like every other.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from mcp_guard.decision import Outcome, Verdict
from mcp_guard.request import Target
from mcp_guard.state import Counter

if TYPE_CHECKING:
    from mcp_guard.grants import Budget
    from mcp_guard.policy import BoundLimit
    from mcp_guard.state import StateStore


async def check_limits(
    store: StateStore,
    limits: tuple[BoundLimit, ...],
    budgets: tuple[Budget, ...],
    entry: Target,
    session_id: str,
    verdict: Verdict,
) -> Verdict:
    """Rate limits and per-session budgets (``limits``: the policies' that apply) and every link's
    call budget (``budgets``); counts only if all pass.  The pipeline calls it only when either
    holds something."""
    counters: list[Counter] = []
    for limit in limits:
        if limit.per_minute is not None and not await store.rate(f"rate:{session_id}:{limit.key}", limit.per_minute):
            return replace(
                verdict,
                decision=Outcome.BUDGET_EXHAUSTED,
                reason=f"mcp-guard denied {entry.qualified}: rate limit of {limit.per_minute} calls per minute reached ({limit.key.split('/')[0]} limits)",
            )
        if limit.per_session is not None:
            counters.append(Counter(f"session:{session_id}:{limit.key}", limit.per_session, time.time() + 86400))
    if budgets:
        counters.extend(Counter(b.key, b.limit, b.expires_at) for b in budgets)
    if counters:
        exhausted = await store.consume(counters)
        if exhausted is not None:
            what = "the grant's call budget" if exhausted.startswith("grant:") or not exhausted.startswith("session:") else "the session's call budget"
            return replace(verdict, decision=Outcome.BUDGET_EXHAUSTED, reason=f"mcp-guard denied {entry.qualified}: {what} is used up")
    return verdict
