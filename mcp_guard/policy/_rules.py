"""A compiled rule, and the sentences a decision says: which rules matched and why, or why
nothing did (``engine.py`` indexes the rules and decides)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext
from mcp_guard.policy._conditions import Compiled, describe
from mcp_guard.policy._flow import FlowCond
from mcp_guard.policy._match import Matcher
from mcp_guard.policy.model import ANNOTATION_DEFAULTS, Decision, Effect, FlowView, Rule, RuleRef

_NO_ARGS: Mapping[str, Any] = {}
_VERB = {Effect.DENY: "denied", Effect.APPROVE: "needs a human to approve", Effect.ALLOW: "allowed"}


@dataclass(frozen=True, slots=True)
class _Subjects:
    users: Matcher | None
    agents: Matcher | None
    purposes: Matcher | None

    def failing(self, p: Principal) -> str | None:
        """The first subject list ``p`` is outside of, or None when the policy applies to ``p``."""
        if self.users is not None and not self.users(p.user):
            return "users"
        if self.agents is not None and not self.agents(p.agents[-1] if p.agents else ""):
            return "agents"
        if self.purposes is not None and not self.purposes(p.purpose or ""):
            return "purposes"
        return None


@dataclass(frozen=True, slots=True)
class _Rule:
    order: int  # canonical position across the whole set
    ref: RuleRef
    policy: int
    rule: Rule
    effect: Effect
    tools: Matcher
    annotations: tuple[tuple[str, bool], ...]
    principal_conds: tuple[Compiled, ...]
    arg_conds: tuple[Compiled, ...]  # judged per request: arguments and the resource URI
    resources: Matcher
    prompts: Matcher
    uri_conds: tuple[Compiled, ...]  # the `uri` conditions among arg_conds (known at list time)
    argument_conds: tuple[Compiled, ...]  # the `args.*` conditions among arg_conds
    flow_conds: tuple[FlowCond, ...] = ()  # session.labels and carries: per request, never at discovery

    def selects(self, kind: Kind, name: str) -> bool:
        return (self.tools if kind is Kind.TOOL else self.resources if kind is Kind.RESOURCE else self.prompts)(name)

    def holds(self, conds: tuple[Compiled, ...], args: Mapping[str, Any], p: Principal, ctx: PathContext | None) -> bool:
        """Whether ``conds`` let this rule match: an allow needs every condition judged true; a
        deny or approve matches unless some condition is judged false (unjudgeable = match)."""
        if self.effect is Effect.ALLOW:
            return all(c.test(args, p, ctx) is True for c in conds)
        return all(c.test(args, p, ctx) is not False for c in conds)

    def annotations_ok(self, annotations: Mapping[str, Any] | None) -> bool:
        """Untrusted or absent annotations read as MCP's defaults: the pessimistic reading."""
        for hint, want in self.annotations:
            got = annotations.get(hint) if annotations is not None else None
            if (got if isinstance(got, bool) else ANNOTATION_DEFAULTS[hint]) is not want:
                return False
        return True



def _combine(matched: list[_Rule], tool: str, flow: FlowView | None = None) -> Decision:
    """All ``matched`` rules share one effect; the first in canonical order gives the reason.  A
    refusal a session label caused names the request that brought the label."""
    first = matched[0]
    text = f": {first.rule.reason.rstrip('. ')}" if first.rule.reason else ""
    sentence = f"mcp-guard {_VERB[first.effect]} {tool}{text} (policy {first.ref.policy})"
    if first.flow_conds and first.effect is not Effect.ALLOW:
        sentence += _causes(first.flow_conds, flow)
    return Decision(first.effect, tuple(r.ref for r in matched), sentence)


def _causes(conds: tuple[FlowCond, ...], flow: FlowView | None) -> str:
    """``; this session holds `private` since fs/read_text_file, audit record 17``."""
    if flow is None:
        return ""
    said = []
    for label in dict.fromkeys(label for f in conds for label in f.involved(flow)):
        cause = flow.cause(label)
        said.append(f"`{label}` since {cause}" if cause else f"`{label}`")
    return f"; this session holds {' and '.join(said)}" if said else ""


def _first_failure(r: _Rule, p: Principal, args: Mapping[str, Any], annotations: Mapping[str, Any] | None,
                   paths: PathContext | None, flow: FlowView | None = None) -> str:
    if not r.annotations_ok(annotations):
        wanted = ", ".join(f"{k}: {str(v).lower()}" for k, v in r.annotations)
        return f"the tool must be annotated {wanted} by a pinned upstream"
    for c, a, ctx in [*((c, _NO_ARGS, None) for c in r.principal_conds), *((c, args, paths) for c in r.arg_conds)]:
        if c.test(a, p, ctx) is not True:  # false or unjudgeable: the same requirement, said once
            return describe(c.source)
    for f in r.flow_conds:
        if f.test(args, p, flow) is not True:
            return describe(f.source) + _causes((f,), flow)
    return "no rule allows it"  # unreachable when called on a rule that did not match


def _default_deny(tool: str, near: _Rule | None, failure: str | None) -> Decision:
    if near is None or failure is None:
        return Decision(Effect.DENY, (), f"mcp-guard denied {tool}: no policy allows it for this principal")
    return Decision(Effect.DENY, (), f"mcp-guard denied {tool}: {failure} (policy {near.ref.policy})", cited=near.ref)
