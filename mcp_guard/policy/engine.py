"""The compiled policy set: indexed once, then every decision is a lookup plus a few predicates.

Combining: deny beats approve beats allow; nothing matching is deny.  Rules are kept
in one canonical order (policy id, then position), so file and policy order never change a
decision.  ``explain`` walks every rule without short-circuit and combines with the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.identity import Principal
from mcp_guard.policy._conditions import Compiled, compile_condition, describe
from mcp_guard.policy._match import Matcher, glob_matcher, is_literal, split_tool
from mcp_guard.policy.model import ANNOTATION_DEFAULTS, Decision, Effect, Limit, Policy, Rule, RuleRef

_CACHE_MAX = 65_536
_PROFILES_MAX = 1_024  # each profile is one byte per rule
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
    arg_conds: tuple[Compiled, ...]

    def annotations_ok(self, annotations: Mapping[str, Any] | None) -> bool:
        """Untrusted or absent annotations read as MCP's defaults: the pessimistic reading."""
        for hint, want in self.annotations:
            got = annotations.get(hint) if annotations is not None else None
            if (got if isinstance(got, bool) else ANNOTATION_DEFAULTS[hint]) is not want:
                return False
        return True


@dataclass(slots=True)
class _Bucket:
    """The rules naming one upstream literally: by exact tool, and tool globs by literal prefix."""

    literal: dict[str, list[_Rule]]
    globs: dict[str, list[_Rule]]
    lengths: tuple[int, ...]  # the distinct prefix lengths in ``globs``


@dataclass(frozen=True, slots=True)
class _Profile:
    """What is known about one principal, filled lazily: per policy (subjects) and per rule
    (subjects and principal conditions); 0 = not yet computed, 1 = no, 2 = yes."""

    policies: bytearray
    rules: bytearray


@dataclass(frozen=True, slots=True)
class _Candidates:
    deny: tuple[_Rule, ...]
    approve: tuple[_Rule, ...]
    allow: tuple[_Rule, ...]
    permits: tuple[_Rule, ...]  # approve + allow in canonical order (for the near-miss reason)
    blanket_deny: tuple[_Rule, ...]  # deny rules without argument conditions (discovery)


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
    ref: RuleRef
    effect: Effect
    tools: bool
    annotations: bool
    conditions: tuple[tuple[str, bool], ...]
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


class PolicySet:
    """An immutable, compiled set of policies.  Build a new one to change it (see ``PolicyHolder``)."""

    def __init__(self, policies: Iterable[Policy], warnings: Iterable[str] = ()) -> None:
        self.policies: tuple[Policy, ...] = tuple(sorted(policies, key=lambda p: p.id))
        self.warnings: tuple[str, ...] = tuple(warnings)
        self._subjects = tuple(
            _Subjects(*(None if g is None else glob_matcher(g) for g in (p.subjects.users, p.subjects.agents, p.subjects.purposes)))
            for p in self.policies
        )
        rules: list[_Rule] = []
        for pi, pol in enumerate(self.policies):
            for ri, rule in enumerate(pol.rules):
                conds = [compile_condition(c) for c in rule.when]
                rules.append(_Rule(
                    len(rules), RuleRef(pol.id, rule.id or str(ri + 1)), pi, rule, rule.effect,
                    glob_matcher(rule.tools, segment=True), rule.annotations,
                    tuple(c for c in conds if not c.source.is_argument), tuple(c for c in conds if c.source.is_argument),
                ))
        self._rules = tuple(rules)
        # index: upstream -> literal tool -> rules, and upstream -> literal prefix of a tool glob ->
        # rules (so a lookup only tries the globs that share the tool's prefix); plus the rules
        # whose upstream is itself a glob
        self._by_upstream: dict[str, _Bucket] = {}
        self._any_upstream: list[_Rule] = []
        for r in rules:
            for pattern in r.rule.tools:
                up, tool = split_tool(pattern)
                if not is_literal(up):
                    self._any_upstream.append(r)
                    continue
                bucket = self._by_upstream.setdefault(up, _Bucket({}, {}, ()))
                if is_literal(tool):
                    bucket.literal.setdefault(tool, []).append(r)
                else:
                    prefix = tool[: min(i for i in (tool.find("*"), tool.find("?")) if i >= 0)]
                    bucket.globs.setdefault(prefix, []).append(r)
        for bucket in self._by_upstream.values():
            bucket.lengths = tuple(sorted({len(k) for k in bucket.globs}))
        self._limits = tuple(
            (pi, BoundLimit(p.id, li, lim), glob_matcher(lim.tools, segment=True))
            for pi, p in enumerate(self.policies) for li, lim in enumerate(p.limits)
        )
        self._cands: dict[str, _Candidates] = {}
        self._profiles: dict[tuple[str, tuple[str, ...], str | None], _Profile] = {}

    @classmethod
    def empty(cls) -> PolicySet:
        """No policies: every tool hidden, every call denied."""
        return cls(())

    def warm(self, tools: Iterable[str]) -> None:
        """Build the per-tool candidate lists now (e.g. for the catalogue, right after a reload and
        before the swap), so the first ``tools/list`` does not pay for them."""
        for tool in tools:
            self._candidates(tool)

    def __len__(self) -> int:
        return len(self._rules)

    # ----------------------------------------------------------------- lookups

    def _candidates(self, tool: str) -> _Candidates:
        found = self._cands.get(tool)
        if found is not None:
            return found
        up, name = split_tool(tool)
        picked: dict[int, _Rule] = {}
        bucket = self._by_upstream.get(up)
        tried: list[_Rule] = list(self._any_upstream)
        if bucket is not None:
            for r in bucket.literal.get(name, ()):
                picked[r.order] = r
            for n in bucket.lengths:
                tried.extend(bucket.globs.get(name[:n], ()))
        for r in tried:
            if r.order not in picked and r.tools(tool):
                picked[r.order] = r
        ordered = [picked[k] for k in sorted(picked)]
        found = _Candidates(
            tuple(r for r in ordered if r.effect is Effect.DENY),
            tuple(r for r in ordered if r.effect is Effect.APPROVE),
            tuple(r for r in ordered if r.effect is Effect.ALLOW),
            tuple(r for r in ordered if r.effect is not Effect.DENY),
            tuple(r for r in ordered if r.effect is Effect.DENY and not r.arg_conds),
        )
        if len(self._cands) >= _CACHE_MAX:
            self._cands.clear()
        self._cands[tool] = found
        return found

    def _profile(self, p: Principal) -> _Profile:
        key = (p.user, p.agents, p.purpose)
        prof = self._profiles.get(key)
        if prof is None:
            if len(self._profiles) >= _PROFILES_MAX:
                self._profiles.clear()
            prof = self._profiles[key] = _Profile(bytearray(len(self.policies)), bytearray(len(self._rules)))
        return prof

    def _subjects_ok(self, prof: _Profile, policy: int, p: Principal) -> bool:
        state = prof.policies[policy]
        if not state:
            state = prof.policies[policy] = 1 if self._subjects[policy].failing(p) else 2
        return state == 2

    def _static(self, prof: _Profile, r: _Rule, p: Principal) -> int:
        """Fill ``prof.rules[r.order]``: subjects and principal conditions (2 = hold, 1 = not)."""
        ok = self._subjects_ok(prof, r.policy, p) and all(c.test(_NO_ARGS, p) for c in r.principal_conds)
        state = prof.rules[r.order] = 2 if ok else 1
        return state

    # ----------------------------------------------------------------- decisions

    def decide(self, principal: Principal, tool: str, args: Mapping[str, Any] | None = None,
               annotations: Mapping[str, Any] | None = None) -> Decision:
        """The decision for calling ``tool`` (``UPSTREAM/TOOL``) with ``args`` as ``principal``."""
        c = self._cands.get(tool) or self._candidates(tool)
        prof = self._profile(principal)
        states = prof.rules
        a = args if isinstance(args, Mapping) else _NO_ARGS
        for tier in (c.deny, c.approve, c.allow):
            matched = [
                r for r in tier
                if (states[r.order] or self._static(prof, r, principal)) == 2
                and (not r.annotations or r.annotations_ok(annotations))
                and all(x.test(a, principal) for x in r.arg_conds)
            ]
            if matched:
                return _combine(matched, tool)
        near = next((r for r in c.permits if self._subjects_ok(prof, r.policy, principal)), None)
        return _default_deny(tool, near, _first_failure(near, principal, a, annotations) if near else None)

    def visible(self, principal: Principal, tool: str, annotations: Mapping[str, Any] | None = None) -> bool:
        """Whether ``tools/list`` shows ``tool`` (docs/policies.md, Discovery); a hidden tool is always denied.

        Some allow/approve rule could apply (argument conditions ignored) and no deny rule that
        has no argument condition applies.
        """
        c = self._cands.get(tool) or self._candidates(tool)
        prof = self._profile(principal)
        states = prof.rules
        for r in c.blanket_deny:
            if (states[r.order] or self._static(prof, r, principal)) == 2 and (not r.annotations or r.annotations_ok(annotations)):
                return False
        for r in c.permits:
            if (states[r.order] or self._static(prof, r, principal)) == 2 and (not r.annotations or r.annotations_ok(annotations)):
                return True
        return False

    def limits(self, principal: Principal, tool: str) -> tuple[BoundLimit, ...]:
        """The limits of every policy that applies to ``principal`` and names ``tool``."""
        return tuple(
            bound for pi, bound, match in self._limits
            if match(tool) and self._subjects[pi].failing(principal) is None
        )

    def explain(self, principal: Principal, tool: str, args: Mapping[str, Any] | None = None,
                annotations: Mapping[str, Any] | None = None) -> Explanation:
        """Every policy and rule, each with whether it matched; nothing short-circuits."""
        a = args if isinstance(args, Mapping) else _NO_ARGS
        traces: list[PolicyTrace] = []
        matched: list[_Rule] = []
        near: _Rule | None = None
        by_policy: dict[int, list[RuleTrace]] = {}
        for r in self._rules:
            failing = self._subjects[r.policy].failing(principal)
            tools_ok = r.tools(tool)
            ann_ok = r.annotations_ok(annotations)
            conds = tuple((describe(x.source), x.test(a, principal)) for x in (*r.principal_conds, *r.arg_conds))
            ok = failing is None and tools_ok and ann_ok and all(v for _, v in conds)
            if ok:
                matched.append(r)
            elif near is None and failing is None and tools_ok and r.effect is not Effect.DENY:
                near = r
            by_policy.setdefault(r.policy, []).append(RuleTrace(r.ref, r.effect, tools_ok, ann_ok, conds, ok))
        for pi, pol in enumerate(self.policies):
            traces.append(PolicyTrace(pol.id, pol.source, pol.description, self._subjects[pi].failing(principal), tuple(by_policy.get(pi, ()))))
        top = max((r.effect.severity for r in matched), default=None)
        if top is not None:
            decision = _combine([r for r in matched if r.effect.severity == top], tool)
        else:
            decision = _default_deny(tool, near, _first_failure(near, principal, a, annotations) if near else None)
        return Explanation(decision, tuple(traces))


def _combine(matched: list[_Rule], tool: str) -> Decision:
    """All ``matched`` rules share one effect; the first in canonical order gives the reason."""
    first = matched[0]
    text = f": {first.rule.reason.rstrip('. ')}" if first.rule.reason else ""
    sentence = f"mcp-guard {_VERB[first.effect]} {tool}{text} (policy {first.ref.policy})"
    return Decision(first.effect, tuple(r.ref for r in matched), sentence)


def _first_failure(r: _Rule, p: Principal, args: Mapping[str, Any], annotations: Mapping[str, Any] | None) -> str:
    if not r.annotations_ok(annotations):
        wanted = ", ".join(f"{k}: {str(v).lower()}" for k, v in r.annotations)
        return f"the tool must be annotated {wanted} by a pinned upstream"
    for c in r.principal_conds:
        if not c.test(_NO_ARGS, p):
            return describe(c.source)
    for c in r.arg_conds:
        if not c.test(args, p):
            return describe(c.source)
    return "no rule allows it"  # unreachable when called on a rule that did not match


def _default_deny(tool: str, near: _Rule | None, failure: str | None) -> Decision:
    if near is None or failure is None:
        return Decision(Effect.DENY, (), f"mcp-guard denied {tool}: no policy allows it for this principal")
    return Decision(Effect.DENY, (), f"mcp-guard denied {tool}: {failure} (policy {near.ref.policy})", cited=near.ref)
