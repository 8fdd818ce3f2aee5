"""The policy language as values: what a policy file says, and what a decision answers.

These are plain frozen dataclasses so that ``parse(dump(p)) == p`` is a meaningful equality and
so the rest of the guard can hold them without caring where they came from.  Source positions
live beside them (``compare=False``), never inside the comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from mcp_guard.kinds import Kind


class Effect(StrEnum):
    """What a rule asks for.  Severity orders the combination: deny > approve > allow."""

    ALLOW = "allow"
    APPROVE = "approve"
    DENY = "deny"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Effect.ALLOW: 0, Effect.APPROVE: 1, Effect.DENY: 2}

OPERATORS = ("equals", "in", "not_in", "glob", "regex", "under", "max_length", "min", "max", "present", "carries")
SESSION_LABELS = "session.labels"  # the condition key on the labels this session holds
LABEL_OPERATORS = ("any_of", "all_of", "none_of")
PRINCIPAL_KEYS = ("user", "agent", "purpose", "chain.depth")
URI_KEY = "uri"  # the resource's URI (resources/read, resources/subscribe, resources/list)
URI_OPERATORS = ("equals", "in", "not_in", "glob", "regex", "under", "present")
SELECTORS = ("tools", "resources", "prompts")
ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
# MCP's own defaults for absent hints: the pessimistic reading (spec, ToolAnnotations).
ANNOTATION_DEFAULTS = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}


def _selectors(owner: Rule | Limit, kind: Kind) -> tuple[str, ...]:
    """The selector list of one kind (``tools``, ``resources`` or ``prompts``) of a rule or limit."""
    return owner.tools if kind is Kind.TOOL else owner.resources if kind is Kind.RESOURCE else owner.prompts


@dataclass(frozen=True, slots=True)
class Condition:
    """``key: {op: operand, ...}``; every operator must hold."""

    key: str
    ops: tuple[tuple[str, Any], ...]

    @property
    def is_argument(self) -> bool:
        """Judged per request (an argument or the resource URI), not once per principal."""
        return self.key.startswith("args.") or self.key == URI_KEY

    @property
    def is_uri(self) -> bool:
        return self.key == URI_KEY

    @property
    def is_flow(self) -> bool:
        """Judged against the session's labels or labelled content (``session.labels``, ``carries``)."""
        return self.key == SESSION_LABELS or any(op == "carries" for op, _ in self.ops)

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels a flow condition names."""
        out: list[str] = []
        for op, v in self.ops:
            if op in LABEL_OPERATORS:
                out.extend(v)
            elif op == "carries":
                out.extend(v["labels"] if isinstance(v, dict) else v)
        return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; it selects by ``tools``, ``resources`` and ``prompts`` (at least one non-empty)."""

    effect: Effect
    tools: tuple[str, ...]
    when: tuple[Condition, ...] = ()
    annotations: tuple[tuple[str, bool], ...] = ()
    reason: str | None = None
    id: str | None = None
    resources: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()

    def selectors(self, kind: Kind) -> tuple[str, ...]:
        return _selectors(self, kind)


@dataclass(frozen=True, slots=True)
class Subjects:
    """Globs on the origin user, the acting agent and the purpose; None = anyone."""

    users: tuple[str, ...] | None = None
    agents: tuple[str, ...] | None = None
    purposes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Limit:
    tools: tuple[str, ...]
    per_minute: int | None = None
    per_session: int | None = None
    resources: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()

    def selectors(self, kind: Kind) -> tuple[str, ...]:
        return _selectors(self, kind)


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    rules: tuple[Rule, ...] = ()
    description: str | None = None
    subjects: Subjects = Subjects()
    limits: tuple[Limit, ...] = ()
    source: str = field(default="", compare=False)  # "file:line" of the policy, for explain
    mode: str = "enforce"  # or "shadow": decided, audited and traced as shadow_decision, never enforced

    @staticmethod
    def split_modes(policies: Iterable[Policy]) -> tuple[list[Policy], list[Policy]]:
        """(the enforced policies, and every policy as if enforced when some are ``mode: shadow``,
        else []): the shadow decision is what the guard would decide once the shadow policies go live."""
        every = list(policies)
        if all(p.mode != "shadow" for p in every):
            return every, []
        return [p for p in every if p.mode != "shadow"], [replace(p, mode="enforce") for p in every]


@dataclass(frozen=True, slots=True)
class LabelEntry:
    """A top-level ``labels:`` entry: what a forwarded request selected by it brings into the
    session.  ``parts`` (paths into the answer's structured content) narrows which content counts
    for ``carries``; None = the whole answer.  ``upstreams`` entries apply to everything those
    upstreams send the host."""

    brings: tuple[str, ...]
    tools: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    when: tuple[Condition, ...] = ()
    parts: tuple[str, ...] | None = None
    source: str = field(default="", compare=False)  # "file:line" of the entry

    def selectors(self, kind: Kind) -> tuple[str, ...]:
        return self.tools if kind is Kind.TOOL else self.resources if kind is Kind.RESOURCE else self.prompts


class FlowView(Protocol):
    """What a decision may know of its session's information flow (built outside the engine).

    ``carries`` answers True, False or None (the content cannot be judged: past its bound, or
    not known offline); ``cause`` says which request brought a label, for the refusal sentence.
    """

    @property
    def labels(self) -> frozenset[str]: ...

    def carries(self, strings: list[str], labels: tuple[str, ...], token: bool) -> bool | None: ...

    def cause(self, label: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RuleRef:
    """Which rule of which policy: ``support-tickets#2`` (1-based index, or the rule's own id)."""

    policy: str
    rule: str

    def __str__(self) -> str:
        return f"{self.policy}#{self.rule}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one call: a value, never an exception.

    ``rules`` are the matched rules of the winning effect (empty for the default deny).
    ``reason`` is the one sentence the caller sees (docs/policies.md), built from policy text and the
    tool name only, never from argument values.
    ``cited`` is the rule the reason quotes when nothing matched but a rule nearly did.
    """

    effect: Effect
    rules: tuple[RuleRef, ...]
    reason: str
    cited: RuleRef | None = None

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """``("support-tickets#2", ...)``: the deciding rules (or the cited one) for audit and spans."""
        refs = self.rules or ((self.cited,) if self.cited else ())
        return tuple(str(r) for r in refs)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        refs = self.rules or ((self.cited,) if self.cited else ())
        return tuple(dict.fromkeys(r.policy for r in refs))
