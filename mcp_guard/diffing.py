"""What a policy change does, before it is live: ``diff`` (two versions side by side) and
``replay`` (recorded requests re-decided under a new version).

A principal's *standing* toward one target under one policy set is worked out without any
request arguments: the most permissive effect it can reach (allow > approve > deny, under the
engine's own combination: an unconditional deny or approve caps it), and whether the outcome
depends on the arguments (some rule that applies has an ``args.*`` condition).  When it does
not, the standing is exactly what ``decision.evaluate`` answers, and that is what is used.

Pure: policy sets, principals and targets in, plain values out.  The command line
(``mcp-guard diff``, ``mcp-guard replay``) reads the files and renders text or JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.decision import evaluate
from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext
from mcp_guard.policy import Condition, Effect, Policy, PolicySet, Rule
from mcp_guard.policy._conditions import describe
from mcp_guard.policy._match import glob_matcher

RANK = {Effect.DENY: 0, Effect.APPROVE: 1, Effect.ALLOW: 2}
# the policy effect behind a recorded (or evaluated) decision
EFFECT_OF = {
    "allow": Effect.ALLOW, "budget_exhausted": Effect.ALLOW,  # the policies allowed it; a limit stopped it
    "approval_required": Effect.APPROVE, "approved": Effect.APPROVE, "rejected": Effect.APPROVE,
    "deny": Effect.DENY,
}
WIDENING = ("widened", "conditions changed")  # what `diff` fails on unless --allow-widening


@dataclass(frozen=True, slots=True)
class DiffTarget:
    """A tool, resource or prompt: ``UPSTREAM/NAME`` (``UPSTREAM/URI`` for a resource)."""

    kind: Kind
    name: str
    annotations: Mapping[str, Any] | None = None

    @property
    def label(self) -> str:
        return self.name if self.kind is Kind.TOOL else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Standing:
    """How one principal stands toward one target under one policy set, arguments unknown."""

    effect: Effect  # the most permissive effect some request can get
    conditional: bool = False  # the outcome depends on the request's arguments
    conditions: tuple[str, ...] = ()  # "allow: args.path must be under /srv", sorted
    rules: tuple[str, ...] = ()  # the rules that can decide it

    def __str__(self) -> str:
        if not self.conditional:
            return str(self.effect)
        return f"conditional ({'; '.join(self.conditions)})"

    def to_json(self) -> dict[str, Any]:
        return {"effect": str(self.effect), "conditional": self.conditional, "conditions": list(self.conditions),
                "rules": list(self.rules)}


@dataclass(frozen=True, slots=True)
class Change:
    principal: Principal
    target: DiffTarget
    old: Standing
    new: Standing
    change: str  # widened | narrowed | now conditional | conditions changed

    @property
    def widening(self) -> bool:
        return self.change in WIDENING

    def to_json(self) -> dict[str, Any]:
        return {"change": self.change, "principal": list(self.principal.chain), "purpose": self.principal.purpose,
                "kind": str(self.target.kind), "target": self.target.name, "old": self.old.to_json(), "new": self.new.to_json()}


def _ordered_conditions(rule: Rule) -> list[Condition]:
    """A rule's conditions in the order ``explain`` traces them: principal ones, then per request."""
    return [c for c in rule.when if not c.is_argument] + [c for c in rule.when if c.is_argument]


def _rule_of(policy: Policy, ref: str) -> Rule | None:
    for i, rule in enumerate(policy.rules):
        if (rule.id or str(i + 1)) == ref:
            return rule
    return None


def standing(policies: PolicySet, who: Principal, target: DiffTarget, paths: PathContext | None = None,
             now: float = 0.0) -> Standing:
    """``who``'s standing toward ``target`` under ``policies`` (see the module docstring)."""
    expl = policies.explain(who, target.name, {}, target.annotations, kind=target.kind, paths=paths)
    by_id = {p.id: p for p in policies.policies}
    fixed: dict[Effect, list[str]] = {e: [] for e in Effect}
    conditional: dict[Effect, list[tuple[str, tuple[str, ...]]]] = {e: [] for e in Effect}
    for pol in expl.policies:
        if pol.subjects_failing is not None:
            continue
        for trace in pol.rules:
            rule = _rule_of(by_id[pol.id], trace.ref.rule)
            if rule is None or not trace.tools or not trace.annotations:
                continue
            conds = _ordered_conditions(rule)
            if len(conds) != len(trace.conditions):  # a condition this module cannot place: never guess it away
                conditional[trace.effect].append((str(trace.ref), ("conditions diff cannot judge",)))
                continue
            judged = [v for c, (_, v) in zip(conds, trace.conditions, strict=True) if not c.key.startswith("args.")]
            if not all(v is True if trace.effect is Effect.ALLOW else v is not False for v in judged):
                continue  # the principal (or the resource's URI) already rules it out
            on_args = tuple(describe(c) for c in conds if c.key.startswith("args."))
            if on_args:
                conditional[trace.effect].append((str(trace.ref), on_args))
            else:
                fixed[trace.effect].append(str(trace.ref))
    present = [e for e in Effect if fixed[e]]
    base = max(present, key=lambda e: e.severity) if present else None
    # conditional rules matter only when they can change the outcome: a more severe effect than
    # what always applies, or (nothing always applies) a permit instead of the default deny
    relevant = [e for e in Effect if conditional[e] and (e.severity > base.severity if base else e is not Effect.DENY)]
    if not relevant:
        verdict = evaluate(policies, None, who, target.name, {}, target.annotations, now, kind=target.kind, paths=paths)
        return Standing(EFFECT_OF.get(str(verdict.decision), Effect.DENY), rules=tuple(verdict.rule_ids))
    best = base if base is not None else min(relevant, key=lambda e: e.severity)
    shown = [e for e in Effect if conditional[e] and (base is None or e.severity > base.severity)]
    texts = sorted({f"{e}: {' and '.join(on)}" for e in shown for _, on in conditional[e]})
    rules = tuple(sorted({*(fixed[base] if base else ()), *(r for e in shown for r, _ in conditional[e])}))
    return Standing(best, True, tuple(texts), rules)


def compare(old: Standing, new: Standing) -> str | None:
    """widened, narrowed, now conditional, conditions changed, or None (no change that matters)."""
    if RANK[new.effect] != RANK[old.effect]:
        return "widened" if RANK[new.effect] > RANK[old.effect] else "narrowed"
    if old.conditional == new.conditional:
        return "conditions changed" if old.conditional and old.conditions != new.conditions else None
    return "now conditional" if new.conditional else "widened"  # conditional -> always: wider


def diff(old: PolicySet, new: PolicySet, principals: Iterable[Principal], targets: Iterable[DiffTarget],
         paths: Callable[[str], PathContext | None] = lambda _upstream: None) -> list[Change]:
    """Every ``principals`` x ``targets`` pair whose standing changes from ``old`` to ``new``."""
    out: list[Change] = []
    ts = list(targets)
    for who in principals:
        for t in ts:
            ctx = paths(t.name.partition("/")[0])
            a, b = standing(old, who, t, ctx), standing(new, who, t, ctx)
            change = compare(a, b)
            if change is not None:
                out.append(Change(who, t, a, b, change))
    return out


# --------------------------------------------------------------------------- who and what to compare


def witness(pattern: str) -> str | None:
    """A name ``pattern`` (a subjects glob) matches: its wildcards filled in; None if none found."""
    candidate = pattern.replace("*", "x").replace("?", "x")
    return candidate if glob_matcher((pattern,))(candidate) else None


def subject_principals(policy_sets: Iterable[PolicySet]) -> list[Principal]:
    """One principal per combination of each policy's subjects (a witness for each glob), plus
    someone no subjects list names."""
    seen: dict[tuple[str, tuple[str, ...], str | None], Principal] = {}

    def add(user: str, agent: str | None, purpose: str | None) -> None:
        who = Principal(user=user, agents=(agent,) if agent else (), purpose=purpose)
        seen.setdefault((who.user, who.agents, who.purpose), who)

    add("someone", None, None)
    for ps in policy_sets:
        for pol in ps.policies:
            s = pol.subjects
            users = [u for u in (witness(g) for g in s.users) if u] if s.users is not None else ["someone"]
            agents: list[str | None] = [a for a in (witness(g) for g in s.agents) if a] if s.agents is not None else [None]
            purposes: list[str | None] = [p for p in (witness(g) for g in s.purposes) if p] if s.purposes is not None else [None]
            for u in users:
                for a in agents:
                    for p in purposes:
                        add(u, a, p)
    return sorted(seen.values(), key=lambda p: (p.user, p.agents, p.purpose or ""))


def literal_targets(policy_sets: Iterable[PolicySet]) -> list[DiffTarget]:
    """Every tool, prompt and resource a rule names literally (no glob in it)."""
    out: dict[tuple[Kind, str], DiffTarget] = {}
    for ps in policy_sets:
        for pol in ps.policies:
            for rule in pol.rules:
                for kind in Kind:
                    for name in rule.selectors(kind):
                        if not any(ch in name for ch in "*?[") and "/" in name:
                            out.setdefault((kind, name), DiffTarget(kind, name))
    return list(out.values())


# --------------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class Replayed:
    """One audited request whose decision changes under the new policies (or may: ``new`` None)."""

    line: int
    time: str
    principal: Principal
    target: DiffTarget
    recorded: str  # the decision in the audit record
    new: Effect | None  # None: depends on arguments the audit did not keep
    standing: Standing | None = None

    @property
    def status(self) -> str:
        if self.new is None:
            return "depends on arguments"
        old = EFFECT_OF[self.recorded]
        return "widened" if RANK[self.new] > RANK[old] else "narrowed"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "time": self.time, "principal": list(self.principal.chain),
                "purpose": self.principal.purpose, "kind": str(self.target.kind), "target": self.target.name,
                "recorded": self.recorded, "new": None if self.new is None else str(self.new), "status": self.status,
                "new_standing": None if self.standing is None else self.standing.to_json()}


def replay_one(policies: PolicySet, line: int, time: str, who: Principal, target: DiffTarget, recorded: str,
               args: Mapping[str, Any] | None, paths: PathContext | None, now: float) -> Replayed | None:
    """The record re-decided under ``policies``; None when its decision does not change.
    ``args`` None: the audit did not keep them; the request is decided only if they cannot matter."""
    if args is None:
        st = standing(policies, who, target, paths, now)
        if st.conditional:
            return Replayed(line, time, who, target, recorded, None, st)
        effect = st.effect
    else:
        verdict = evaluate(policies, None, who, target.name, args, target.annotations, now, kind=target.kind, paths=paths)
        effect = EFFECT_OF.get(str(verdict.decision), Effect.DENY)
    return None if effect is EFFECT_OF[recorded] else Replayed(line, time, who, target, recorded, effect)


def chain_decided(record: Mapping[str, Any]) -> bool:
    """A refusal that came from the grant chain, not the policies: the policies alone cannot
    re-decide it (the chain is not in the audit log)."""
    if not record.get("grant_id"):
        return False
    decision, reason = record.get("decision"), str(record.get("reason") or "")
    if decision == "deny":
        return "(policy " not in reason
    return decision in ("approval_required", "approved", "rejected") and not record.get("policy_ids")


__all__ = [
    "EFFECT_OF",
    "Change",
    "DiffTarget",
    "Replayed",
    "Standing",
    "chain_decided",
    "compare",
    "diff",
    "literal_targets",
    "replay_one",
    "standing",
    "subject_principals",
    "witness",
]
