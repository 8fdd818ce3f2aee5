"""What ``serve`` still needs before it can serve (``GET /readyz`` of ``serve.admin``).

Ready means: policies are loaded (a guard with none refuses every call), the state store answers
(budgets, limits, revocations and approvals live there: without it every decision fails closed),
every upstream marked ``required: true`` is up, and the guard is not draining.  Optional upstreams
never hold readiness back: a call to one that is down is refused on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from mcp_guard.errors import GuardError

if TYPE_CHECKING:
    from mcp_guard.proxy.context import GuardContext
    from mcp_guard.upstreams.connection import Upstream

STORE_PING_SECONDS = 2.0  # a probe must answer well within the kubelet's default 1 s... 10 s window


async def missing(ctx: GuardContext, upstreams: Mapping[str, Upstream], draining: Callable[[], bool]) -> list[dict[str, str]]:
    """One ``{"component", "reason"}`` per thing that keeps the guard from serving; [] when ready."""
    out: list[dict[str, str]] = []
    if draining():
        out.append({"component": "serve", "reason": "draining: this process is shutting down"})
    if not ctx.policies.policies:
        out.append({"component": "policies", "reason": "no policy is loaded: every call would be refused"})
    try:
        await asyncio.wait_for(ctx.store.ping(), STORE_PING_SECONDS)
    except (TimeoutError, GuardError, OSError) as exc:
        why = f"no answer within {STORE_PING_SECONDS:g}s" if isinstance(exc, TimeoutError) else str(exc)
        out.append({"component": "state store", "reason": f"{ctx.store.url.split('://')[0]}:// does not answer: {why}"})
    for name, up in upstreams.items():
        if up.config.required and up.status != "ready":
            why = f": {up.last_error}" if up.last_error else ""
            out.append({"component": f"upstream {name}", "reason": f"required and {up.status}{why}"})
    return out


__all__ = ["missing"]
