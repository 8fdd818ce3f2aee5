"""What every session of one guard shares (``GuardContext``), and who answers when a human must
approve (``Approver``): below the session, the pipeline and the approvals, which all read them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mcp_guard.config import GuardConfig
from mcp_guard.decision import Outcome, Verdict
from mcp_guard.pinning import PinSet
from mcp_guard.policy import PolicySet
from mcp_guard.request import RequestContext, Target
from mcp_guard.telemetry import OFF, Hooks

if TYPE_CHECKING:
    from mcp_guard.audit import AuditLog
    from mcp_guard.grants import GrantChain
    from mcp_guard.state import StateStore


class Approver(Protocol):
    """Asks a human.  Returns the final verdict (approved or rejected), or an
    ``approval_required`` verdict carrying ``input_required`` (the 2026-07-28 round trip)."""

    async def ask(self, req: RequestContext, target: Target, args: dict[str, Any], verdict: Verdict) -> Verdict: ...


class NoApprover:
    """Fail closed until a human channel is configured."""

    async def ask(self, req: RequestContext, target: Target, args: dict[str, Any], verdict: Verdict) -> Verdict:
        return Verdict(Outcome.REJECTED, f"{verdict.reason}, and no human approval channel is available",
                       verdict.policy_ids, verdict.rule_ids)


@dataclass
class GuardContext:
    """What every session of one guard shares: config, compiled policies, state, audit, identity."""

    config: GuardConfig
    policies: PolicySet
    store: StateStore
    audit: AuditLog | None = None
    chain: GrantChain | None = None
    approver: Approver = field(default_factory=NoApprover)
    pins: PinSet | None = None
    clock: Callable[[], float] = time.time
    approval_queue_only: bool = False  # serve: channels the caller holds (elicitation, input_required) never approve
    telemetry: Hooks = OFF  # this guard process's spans and metrics (``telemetry.start``)
    approval_page: str | None = None  # serve: the approval page's public origin (serve.approvals), else None
    flow_exclusive: bool = False  # run: this process is the only writer of its sessions' flow state (cache it)
