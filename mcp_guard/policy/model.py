"""The policy language as values: what a policy file says, and what a decision answers.

These are plain frozen dataclasses so that ``parse(dump(p)) == p`` is a meaningful equality and
so the rest of the guard can hold them without caring where they came from.  Source positions
live beside them (``compare=False``), never inside the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Effect(StrEnum):
    """What a rule asks for.  Severity orders the combination: deny > approve > allow."""

    ALLOW = "allow"
    APPROVE = "approve"
    DENY = "deny"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Effect.ALLOW: 0, Effect.APPROVE: 1, Effect.DENY: 2}

OPERATORS = ("equals", "in", "not_in", "glob", "regex", "under", "max_length", "min", "max", "present")
PRINCIPAL_KEYS = ("user", "agent", "purpose", "chain.depth")
ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
# MCP's own defaults for absent hints: the pessimistic reading (spec, ToolAnnotations).
ANNOTATION_DEFAULTS = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}


@dataclass(frozen=True, slots=True)
class Condition:
    """``key: {op: operand, ...}``; every operator must hold."""

    key: str
    ops: tuple[tuple[str, Any], ...]

    @property
    def is_argument(self) -> bool:
        return self.key.startswith("args.")


@dataclass(frozen=True, slots=True)
class Rule:
    effect: Effect
    tools: tuple[str, ...]
    when: tuple[Condition, ...] = ()
    annotations: tuple[tuple[str, bool], ...] = ()
    reason: str | None = None
    id: str | None = None


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


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    rules: tuple[Rule, ...] = ()
    description: str | None = None
    subjects: Subjects = Subjects()
    limits: tuple[Limit, ...] = ()
    source: str = field(default="", compare=False)  # "file:line" of the policy, for explain


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
