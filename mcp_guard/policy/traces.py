"""The values ``PolicySet`` hands out besides decisions: bound limits and ``explain`` traces."""

from __future__ import annotations

from dataclasses import dataclass

from mcp_guard.paths import Tri
from mcp_guard.policy.model import Decision, Effect, Limit, RuleRef


@dataclass(frozen=True, slots=True)
class BoundLimit:
    """A limit of one policy; ``key`` names its counters in the state store."""

    policy: str
    index: int
    limit: Limit

    @property
    def key(self) -> str:
        return f"{self.policy}/limit{self.index + 1}"

    @property
    def per_minute(self) -> int | None:
        return self.limit.per_minute

    @property
    def per_session(self) -> int | None:
        return self.limit.per_session


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule's verdict for ``explain``; ``tools`` is whether its selectors name the request
    (tools, resources or prompts), each condition is True, False or None (unjudgeable)."""

    ref: RuleRef
    effect: Effect
    tools: bool
    annotations: bool
    conditions: tuple[tuple[str, Tri], ...]
    matched: bool


@dataclass(frozen=True, slots=True)
class PolicyTrace:
    id: str
    source: str
    description: str | None
    subjects_failing: str | None
    rules: tuple[RuleTrace, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    policies: tuple[PolicyTrace, ...]
