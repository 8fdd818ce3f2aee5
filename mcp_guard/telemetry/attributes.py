"""Attribute names and the builders of the guard's attribute sets (docs/telemetry.md).

The names follow the OpenTelemetry MCP semantic conventions (``mcp.*``), the GenAI ones for tools,
prompts, agents and guardrails (``gen_ai.*``) and the RPC/JSON-RPC ones for outcomes, plus the
guard's own ``mcp_guard.*`` names.  They are local constants: the semconv package marks the MCP and
GenAI names as moved or deprecated.

Every builder here returns values that are already valid OTLP attribute values (str, bool, int or
tuples of str), since light spans take them as they are; the sets that repeat call after call
(principal, decision) are built once and cached.  Attributes never carry tool argument values or
the grant token.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.identity import Principal

MCP_METHOD_NAME = "mcp.method.name"
MCP_PROTOCOL_VERSION = "mcp.protocol.version"
MCP_SESSION_ID = "mcp.session.id"
MCP_RESOURCE_URI = "mcp.resource.uri"
JSONRPC_REQUEST_ID = "jsonrpc.request.id"
RPC_RESPONSE_STATUS_CODE = "rpc.response.status_code"
ERROR_TYPE = "error.type"
NETWORK_TRANSPORT = "network.transport"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_PROMPT_NAME = "gen_ai.prompt.name"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
ENDUSER_ID = "enduser.id"

GUARDRAIL_COMPONENT_NAME = "gen_ai.guardrail.component.name"
GUARDRAIL_TARGET_TYPE = "gen_ai.guardrail.target.type"
GUARDRAIL_TARGET_SUBTYPE = "gen_ai.guardrail.target.subtype"
GUARDRAIL_TARGET_ID = "gen_ai.guardrail.target.id"
GUARDRAIL_VERDICT_TYPE = "gen_ai.guardrail.verdict.type"
GUARDRAIL_VERDICT_CODE = "gen_ai.guardrail.verdict.code"
GUARDRAIL_VERDICT_REASON = "gen_ai.guardrail.verdict.reason"
GUARDRAIL_ACTION_TYPE = "gen_ai.guardrail.action.type"
GUARDRAIL_POLICY_ID = "gen_ai.guardrail.security.policy.id"
GUARDRAIL_RULE_ID = "gen_ai.guardrail.security.policy.rule.id"

PRINCIPAL_CHAIN = "mcp_guard.principal.chain"
PRINCIPAL_VERIFIED = "mcp_guard.principal.verified"
PURPOSE = "mcp_guard.purpose"
GRANT_ID = "mcp_guard.grant.id"
DELEGATION_DEPTH = "mcp_guard.delegation.depth"
DECISION = "mcp_guard.decision"
SHADOW_DECISION = "mcp_guard.shadow_decision"  # what the `mode: shadow` policies would decide (never enforced)
POLICY_IDS = "mcp_guard.policy.ids"
RULE_IDS = "mcp_guard.rule.ids"
DECISION_REASON = "mcp_guard.decision.reason"
APPROVER = "mcp_guard.approver"
UPSTREAM = "mcp_guard.upstream"
SESSION_LABELS = "mcp_guard.session.labels"  # the labels the session held when the request was decided
TOOL = "mcp_guard.tool"
TOOLS_LISTED = "mcp_guard.tools.listed"
TOOLS_HIDDEN = "mcp_guard.tools.hidden"

SERVER_DURATION = "mcp.server.operation.duration"
CLIENT_DURATION = "mcp.client.operation.duration"
DECISIONS = "mcp_guard.decisions"

COMPONENT = "mcp-guard"
GUARDRAIL_SPAN = f"run_guardrail {COMPONENT}"
APPROVAL_EVENT = "mcp_guard.approval.resolved"

# decision -> (gen_ai.guardrail.verdict.type, gen_ai.guardrail.action.type); an approval is an
# escalation whose outcome is recorded as an event, not by overwriting the verdict (semconv).
_VERDICTS: dict[str, tuple[str, str]] = {
    "allow": ("allow", "allow"),
    "approval_required": ("escalate", "escalate"),
    "approved": ("escalate", "escalate"),
    "rejected": ("escalate", "escalate"),
}
_DENY = ("deny", "block")

UNGUARDED = frozenset(("initialize", "server/discover", "ping"))  # no principal on their SERVER span
SUBTYPE = {"tool": "tool_call", "resource": "resource", "prompt": "prompt"}  # gen_ai.guardrail.target.subtype
NAME_ATTR = {"tool": GEN_AI_TOOL_NAME, "prompt": GEN_AI_PROMPT_NAME}  # never a resource URI in a metric
RESOURCE_METHODS = frozenset(("resources/read", "resources/subscribe", "resources/unsubscribe"))
GUARDRAIL_FIXED: Mapping[str, AttributeValue] = {
    GEN_AI_OPERATION_NAME: "run_guardrail",
    GUARDRAIL_COMPONENT_NAME: COMPONENT,
    GUARDRAIL_TARGET_TYPE: "input",
    GUARDRAIL_TARGET_SUBTYPE: "tool_call",
}


def text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


@functools.lru_cache(maxsize=256)
def principal_attributes(who: Principal) -> Mapping[str, AttributeValue]:
    """Who asked: built once per principal (a session's principal rarely changes)."""
    attrs: dict[str, AttributeValue] = {
        PRINCIPAL_CHAIN: tuple(text(c) for c in who.chain),
        ENDUSER_ID: text(who.user),
        DELEGATION_DEPTH: int(who.depth),
    }
    if who.agent:
        attrs[GEN_AI_AGENT_NAME] = text(who.agent)
    if who.purpose:
        attrs[PURPOSE] = text(who.purpose)
    if who.grant_id:
        attrs[GRANT_ID] = text(who.grant_id)
    return attrs


@functools.lru_cache(maxsize=1024)
def decided(
    decision: str, policy_ids: tuple[str, ...], rule_ids: tuple[str, ...], reason: str, upstream: str, approver: str | None
) -> tuple[Mapping[str, AttributeValue], Mapping[str, AttributeValue]]:
    """(the decision attributes every span of the request carries, the guardrail span's outcome
    attributes), built once per distinct outcome: the same rule decides the same way call after call.
    Policy text only, never argument values."""
    decision_attrs: dict[str, AttributeValue] = {
        DECISION: str(decision),  # a plain str, also for the proxy's Outcome enum
        POLICY_IDS: tuple(text(p) for p in policy_ids),
        DECISION_REASON: text(reason),
        UPSTREAM: text(upstream),
    }
    if approver:
        decision_attrs[APPROVER] = text(approver)
    verdict_type, action = _VERDICTS.get(decision, _DENY)
    outcome: dict[str, AttributeValue] = {
        **decision_attrs,
        GUARDRAIL_VERDICT_TYPE: verdict_type,
        GUARDRAIL_ACTION_TYPE: action,
        GUARDRAIL_VERDICT_CODE: decision_attrs[DECISION],
        GUARDRAIL_VERDICT_REASON: decision_attrs[DECISION_REASON],
    }
    if policy_ids:
        outcome[GUARDRAIL_POLICY_ID] = text(policy_ids[0])
    if rule_ids:
        outcome[GUARDRAIL_RULE_ID] = text(rule_ids[0])
        outcome[RULE_IDS] = tuple(text(r) for r in rule_ids)
    return decision_attrs, outcome


def target_of(method: str, params: Any) -> tuple[str | None, str | None]:
    """(attribute, value) naming what a request is about: the tool or prompt (never a resource URI)."""
    if isinstance(params, dict) and isinstance(params.get("name"), str):
        if method == "tools/call":
            return GEN_AI_TOOL_NAME, params["name"]
        if method == "prompts/get":
            return GEN_AI_PROMPT_NAME, params["name"]
    return None, None


def error_of(response: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(error.type, rpc status code, description) of a JSON-RPC response, all None on success."""
    err = response.get("error")
    if isinstance(err, dict):
        code = str(err.get("code", "_OTHER"))
        return code, code, str(err.get("message", ""))
    res = response.get("result")
    if isinstance(res, dict) and res.get("isError") is True:
        return "tool_error", None, None
    return None, None, None


def server_metric(method: str, version: object, target_attr: str | None, target: str | None,
                  error_type: str | None) -> dict[str, AttributeValue]:
    """The attributes of one ``mcp.server.operation.duration`` point."""
    attrs: dict[str, AttributeValue] = {MCP_METHOD_NAME: method, NETWORK_TRANSPORT: "pipe", MCP_PROTOCOL_VERSION: text(version)}
    if target_attr is not None and target is not None:
        attrs[target_attr] = target
    if error_type:
        attrs[ERROR_TYPE] = error_type
    return attrs
