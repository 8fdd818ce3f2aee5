"""The request record: what one host request is about (``Target``) and who asks how (``RequestContext``).

It sits below telemetry and the call pipeline so that every reader of a request (the pipeline,
the approver, the audit, the telemetry) shares one record without importing the proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mcp_guard.jsonrpc import Era, Message
from mcp_guard.kinds import Kind
from mcp_guard.pinning import PinStatus

if TYPE_CHECKING:
    from mcp_guard.decision import Verdict
    from mcp_guard.grants import GrantChain
    from mcp_guard.identity import Principal


@dataclass(frozen=True, slots=True)
class Target:
    """What one request is about, resolved: a tool, a resource (by URI) or a prompt of one upstream."""

    exposed: str  # the name the host sees and calls (a resource's URI as it is)
    upstream: str
    name: str  # the upstream's own name (tool or prompt name, resource URI)
    qualified: str  # "UPSTREAM/NAME", the name policies and grants speak of
    definition: Message  # host-facing definition (name rewritten)
    annotations: Message | None  # only when trusted: pinned and unchanged, or `trust_annotations: true`
    pin: PinStatus = "off"  # pinned | new | changed | off (pinning: off)
    held: bool = False  # hidden and refused: pinning: enforce and not pinned as it is now
    kind: Kind = Kind.TOOL


class AskHost(Protocol):
    """The session's back channel to a handshake-era host (elicitation for approvals)."""

    async def __call__(self, method: str, params: Message | None, timeout: float | None = None) -> Message: ...  # noqa: ASYNC109


TellHost = Callable[[Message], Awaitable[None]]


@dataclass(slots=True)
class RequestContext:
    """One host request as the pipeline, the approver, the audit and the telemetry see it.

    It is also the request's one record: the pipeline fills in ``target`` and ``verdict`` once,
    the telemetry adds the ids of the span that decided (``trace``), and both the span ends and
    the audit record read them from here instead of each working them out again.
    """

    session_id: str
    principal: Principal
    chain: GrantChain | None
    era: Era | None
    protocol_version: str
    message: Message
    capabilities: Message  # what the host declared: this request's ``_meta`` (2026-07-28) or the handshake's
    client_info: Message
    ask_host: AskHost | None = None
    limit_scope: str = ""  # what per_minute/per_session limits count by (the session id unless set)
    chain_checked: bool = False  # expiry and revocation already checked for this request
    target: Target | None = None  # what was decided (set by the pipeline)
    verdict: Verdict | None = None  # how (set by the pipeline, once)
    shadow: Verdict | None = None  # what the policies in `mode: shadow` would decide (audited and traced, never enforced)
    trace: tuple[int, int] | None = None  # (trace id, span id) of the span that decided, when traced
    tools_listed: tuple[int, int] | None = None  # tools/list: (listed, hidden by policy or grant)
    flow_scope: str | None = None  # whose labels (set when the flow step ran)
    session_labels: frozenset[str] | None = None  # the labels the session held when decided
    audit_record: int | None = None  # the first 48 bits of this request's audit record hash, once written
    tell_host: TellHost | None = None  # a notification to the host about this request (e.g. who must decide)
    session_key: str = ""  # the session as every serve replica names it (its labels, approvals remembered for it)

    @property
    def params(self) -> Message:
        params = self.message.get("params")
        return params if isinstance(params, dict) else {}

    @property
    def method(self) -> str:
        return str(self.message.get("method"))
