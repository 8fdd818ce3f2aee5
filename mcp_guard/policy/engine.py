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
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext, uri_forms
from mcp_guard.policy._conditions import URI_SLOT, compile_condition, describe
from mcp_guard.policy._flow import FlowCond, LabelRules, compile_flow
from mcp_guard.policy._match import (
    glob_matcher,
    is_literal,
    resource_matcher,
    split_resource_selector,
    split_tool,
    template_fit,
)
from mcp_guard.policy._rules import _NO_ARGS, _combine, _default_deny, _first_failure, _Rule, _Subjects
from mcp_guard.policy.model import (
    Decision,
    Effect,
    FlowView,
    LabelEntry,
    Policy,
    RuleRef,
)
from mcp_guard.policy.traces import BoundLimit, Explanation, PolicyTrace, RuleTrace

_CACHE_MAX = 65_536
_TOOL, _RESOURCE = Kind.TOOL, Kind.RESOURCE  # read per call: globals (``Kind.TOOL`` is an enum metaclass hook on 3.11)
_PROFILES_MAX = 1_024  # each profile is one byte per rule


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
    limits: dict[tuple[Kind, str], tuple[BoundLimit, ...]]  # (kind, name) -> the limits that apply


@dataclass(frozen=True, slots=True)
class _Candidates:
    deny: tuple[_Rule, ...]
    approve: tuple[_Rule, ...]
    allow: tuple[_Rule, ...]
    permits: tuple[_Rule, ...]  # approve + allow in canonical order (for the near-miss reason)
    blanket_deny: tuple[_Rule, ...]  # deny rules without argument conditions (discovery)
    tiers: tuple[tuple[tuple[_Rule, ...], bool], ...] = ()  # the non-empty tiers, most severe first; True = allow


class PolicySet:
    """An immutable, compiled set of policies.  Build a new one to change it (hot reload swaps the reference)."""

    def __init__(self, policies: Iterable[Policy], warnings: Iterable[str] = (), labels: Iterable[LabelEntry] = ()) -> None:
        enforced, every = Policy.split_modes(policies)
        self.shadow: PolicySet | None = PolicySet(every) if every else None  # evaluated only when present
        self.policies: tuple[Policy, ...] = tuple(sorted(enforced, key=lambda p: p.id))
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.labels = LabelRules(tuple(labels))
        self._subjects = tuple(
            _Subjects(*(None if g is None else glob_matcher(g) for g in (p.subjects.users, p.subjects.agents, p.subjects.purposes)))
            for p in self.policies
        )
        rules: list[_Rule] = []
        for pi, pol in enumerate(self.policies):
            for ri, rule in enumerate(pol.rules):
                existential = rule.effect is not Effect.ALLOW
                conds = [compile_condition(c, existential=existential) for c in rule.when if not c.is_flow]
                flow: list[FlowCond] = []
                for c in rule.when:
                    if c.is_flow:
                        plain, fc = compile_flow(c, existential=existential)
                        conds.extend((plain,) if plain is not None else ())
                        flow.extend((fc,) if fc is not None else ())
                per_request = tuple(c for c in conds if c.source.is_argument)
                rules.append(_Rule(
                    len(rules), RuleRef(pol.id, rule.id or str(ri + 1)), pi, rule, rule.effect,
                    glob_matcher(rule.tools, segment=True), rule.annotations,
                    tuple(c for c in conds if not c.source.is_argument), per_request,
                    resource_matcher(rule.resources), glob_matcher(rule.prompts, segment=True),
                    tuple(c for c in per_request if c.source.is_uri), tuple(c for c in per_request if not c.source.is_uri),
                    tuple(flow),
                ))
        self._rules = tuple(rules)
        # whether a decision needs the session's flow state at all (else the flow step costs nothing)
        self.uses_flow = bool(self.labels.entries) or any(r.flow_conds for r in rules)
        self._index = {kind: _Index(kind, rules) for kind in Kind}
        self._limits = tuple(
            (pi, BoundLimit(p.id, li, lim),
             {Kind.TOOL: glob_matcher(lim.tools, segment=True), Kind.RESOURCE: resource_matcher(lim.resources),
              Kind.PROMPT: glob_matcher(lim.prompts, segment=True)})
            for pi, p in enumerate(self.policies) for li, lim in enumerate(p.limits)
        )
        tools = self._index[Kind.TOOL]
        self._cands = tools.cache  # the tool hot path reads the cache directly
        self._candidates = tools.candidates
        self._templates: dict[str, tuple[tuple[_Rule, ...], tuple[_Rule, ...]]] = {}
        self._profiles: dict[tuple[str, tuple[str, ...], str | None], _Profile] = {}
        self._last_profile: tuple[Principal | None, _Profile] = (None, _Profile(bytearray(), bytearray(), {}))
        # decisions by (name, matched rules): the sentence and the rule ids are built once, and the
        # same Decision object comes back, so callers may keep what they derive from it
        self._combined: dict[tuple[object, ...], Decision] = {}

    @classmethod
    def empty(cls) -> PolicySet:
        """No policies: every tool hidden, every call denied."""
        return cls(())

    def warm(self, tools: Iterable[str], *, kind: Kind = Kind.TOOL) -> None:
        """Build the per-name candidate lists now (e.g. for the catalogue, right after a reload and
        before the swap), so the first ``tools/list`` does not pay for them."""
        index = self._index[kind]
        for tool in tools:
            index.candidates(tool)

    def __len__(self) -> int:
        return len(self._rules)

    # ----------------------------------------------------------------- lookups

    def _profile(self, p: Principal) -> _Profile:
        last = self._last_profile  # the same (immutable) principal as the call before: no key to hash
        if last[0] is p:
            return last[1]
        key = (p.user, p.agents, p.purpose)
        prof = self._profiles.get(key)
        if prof is None:
            if len(self._profiles) >= _PROFILES_MAX:
                self._profiles.clear()
            prof = self._profiles[key] = _Profile(bytearray(len(self.policies)), bytearray(len(self._rules)), {})
        self._last_profile = (p, prof)  # holds the principal: its id is not reused while kept
        return prof

    def _subjects_ok(self, prof: _Profile, policy: int, p: Principal) -> bool:
        state = prof.policies[policy]
        if not state:
            state = prof.policies[policy] = 1 if self._subjects[policy].failing(p) else 2
        return state == 2

    def _static(self, prof: _Profile, r: _Rule, p: Principal) -> int:
        """Fill ``prof.rules[r.order]``: subjects and principal conditions (2 = hold, 1 = not)."""
        ok = self._subjects_ok(prof, r.policy, p) and r.holds(r.principal_conds, _NO_ARGS, p, None)
        state = prof.rules[r.order] = 2 if ok else 1
        return state

    # ----------------------------------------------------------------- decisions

    def decide(self, principal: Principal, tool: str, args: Mapping[str, Any] | None = None,
               annotations: Mapping[str, Any] | None = None, *, kind: Kind = Kind.TOOL,
               paths: PathContext | None = None, flow: FlowView | None = None) -> Decision:
        """The decision for ``tool`` (``UPSTREAM/NAME``; for a resource ``UPSTREAM/URI``) with ``args``
        as ``principal``; ``paths`` places relative and linked paths for ``under``; ``flow`` is the
        session's labels and labelled content (None: a session that holds nothing)."""
        if kind is _TOOL:
            c = self._cands.get(tool) or self._candidates(tool)
            # a dict first: ``isinstance`` of an ABC walks its subclass hook per call
            a = args if type(args) is dict or isinstance(args, Mapping) else _NO_ARGS
            return self._decide(c, principal, a, annotations, paths, tool, flow)
        if kind is Kind.PROMPT:
            c = self._index[kind].candidates(tool)
            a = args if isinstance(args, Mapping) else _NO_ARGS
            return self._decide(c, principal, a, annotations, paths, f"prompt {tool}", flow)
        label = f"resource {tool}"
        forms = _resource_forms(tool)
        if forms is None:
            return Decision(Effect.DENY, (), f"mcp-guard denied {label}: its URI cannot be judged safely")
        index = self._index[Kind.RESOURCE]
        worst: Decision | None = None
        for name, uri in forms:
            d = self._decide(index.candidates(name), principal, {URI_SLOT: uri}, annotations, paths, label, flow)
            if worst is None or d.effect.severity > worst.effect.severity:
                worst = d
        assert worst is not None
        return worst

    def _decide(self, c: _Candidates, principal: Principal, a: Mapping[str, Any], annotations: Mapping[str, Any] | None,
                paths: PathContext | None, label: str, flow: FlowView | None = None) -> Decision:
        prof = self._profile(principal)
        states = prof.rules
        for tier, allow in c.tiers:  # precomputed: no allocation, empty tiers skipped
            if allow:
                matched = [
                    r for r in tier
                    if (states[r.order] or self._static(prof, r, principal)) == 2
                    and (not r.annotations or r.annotations_ok(annotations))
                    and (not r.arg_conds or all(x.test(a, principal, paths) is True for x in r.arg_conds))
                    and (not r.flow_conds or all(f.test(a, principal, flow) is True for f in r.flow_conds))
                ]
            else:
                matched = [
                    r for r in tier
                    if (states[r.order] or self._static(prof, r, principal)) == 2
                    and (not r.annotations or r.annotations_ok(annotations))
                    and (not r.arg_conds or all(x.test(a, principal, paths) is not False for x in r.arg_conds))
                    and (not r.flow_conds or all(f.test(a, principal, flow) is not False for f in r.flow_conds))
                ]
            if matched:
                first = matched[0]
                if first.flow_conds and first.effect is not Effect.ALLOW:  # its sentence names the session's labels
                    return _combine(matched, label, flow)
                # one matched rule (the common case) without a list: the same key either way
                key = (label, first.order) if len(matched) == 1 else (label, *[r.order for r in matched])
                decision = self._combined.get(key)
                if decision is None:
                    if len(self._combined) >= _CACHE_MAX:
                        self._combined.clear()
                    decision = self._combined[key] = _combine(matched, label, flow)
                return decision
        near = next((r for r in c.permits if self._subjects_ok(prof, r.policy, principal)), None)
        return _default_deny(label, near, _first_failure(near, principal, a, annotations, paths, flow) if near else None)

    def visible(self, principal: Principal, tool: str, annotations: Mapping[str, Any] | None = None, *,
                kind: Kind = Kind.TOOL, judge_uri: bool = True) -> bool:
        """Whether a listing shows ``tool``; a hidden one is always denied.

        Some allow/approve rule could apply (argument conditions ignored) and no deny rule that
        has no argument condition applies.  For a resource the ``uri`` conditions are known at
        list time and are judged (an unjudgeable one hides); ``judge_uri=False`` (resource
        templates): some allow or approve rule could select one of its expansions (its selectors
        and ``uri`` equals/in/glob met) and no unconditional deny selects all of them.
        """
        if kind is not _RESOURCE:
            c = (self._cands.get(tool) or self._candidates(tool)) if kind is _TOOL else self._index[kind].candidates(tool)
            return bool(c.permits) and self._visible(c, principal, annotations, None)  # no permit: hidden, at once
        if not judge_uri:
            permits, blanket = self._template_rules(tool)
            return self._visible(_Candidates((), (), (), permits, blanket), principal, annotations, None)
        forms = _resource_forms(tool)
        if forms is None:
            return False
        index = self._index[Kind.RESOURCE]
        return all(self._visible(index.candidates(name), principal, annotations, {URI_SLOT: uri}) for name, uri in forms)

    def _visible(self, c: _Candidates, principal: Principal, annotations: Mapping[str, Any] | None,
                 uri: Mapping[str, Any] | None) -> bool:
        prof = self._profile(principal)
        states = prof.rules
        for r in c.blanket_deny:
            if (states[r.order] or self._static(prof, r, principal)) == 2 and (not r.annotations or r.annotations_ok(annotations)) \
                    and (uri is None or r.holds(r.uri_conds, uri, principal, None)):
                return False
        for r in c.permits:
            if (states[r.order] or self._static(prof, r, principal)) == 2 and (not r.annotations or r.annotations_ok(annotations)) \
                    and (uri is None or r.holds(r.uri_conds, uri, principal, None)):
                return True
        return False

    def _template_rules(self, name: str) -> tuple[tuple[_Rule, ...], tuple[_Rule, ...]]:
        """For the template ``UPSTREAM/TEMPLATE``: the permits some expansion could match, and the
        denies without any condition that select every expansion (they hide the template)."""
        found = self._templates.get(name)
        if found is None:
            upstream, template = split_resource_selector(name)
            permits: list[_Rule] = []
            blanket: list[_Rule] = []
            for r in self._rules:
                ops = [op for c in r.uri_conds for op in c.source.ops] if r.effect is not Effect.DENY else []
                meets, covers = template_fit(upstream, template, r.rule.resources, ops)
                if r.effect is not Effect.DENY and meets:
                    permits.append(r)
                elif r.effect is Effect.DENY and covers and not r.arg_conds and not r.flow_conds:
                    blanket.append(r)
            if len(self._templates) >= _CACHE_MAX:
                self._templates.clear()
            found = self._templates[name] = (tuple(permits), tuple(blanket))
        return found

    def limits(self, principal: Principal, tool: str, kind: Kind = Kind.TOOL) -> tuple[BoundLimit, ...]:
        """The limits of every policy that applies to ``principal`` and names ``tool`` (kept per
        principal, as its subjects are, and per name)."""
        if not self._limits:
            return ()
        known = self._profile(principal).limits
        found = known.get((kind, tool))
        if found is None:
            if len(known) >= _CACHE_MAX:
                known.clear()
            found = known[kind, tool] = self._limits_of(principal, tool, kind)
        return found

    def _limits_of(self, principal: Principal, tool: str, kind: Kind) -> tuple[BoundLimit, ...]:
        if kind is Kind.RESOURCE:
            forms = _resource_forms(tool)
            if forms is None:
                return ()
            tool = forms[0][0]
        return tuple(
            bound for pi, bound, match in self._limits
            if match[kind](tool) and self._subjects[pi].failing(principal) is None
        )

    def explain(self, principal: Principal, tool: str, args: Mapping[str, Any] | None = None,
                annotations: Mapping[str, Any] | None = None, *, kind: Kind = Kind.TOOL,
                paths: PathContext | None = None, flow: FlowView | None = None) -> Explanation:
        """Every policy and rule, each with whether it matched; nothing short-circuits.

        For a resource the rules are traced against the URI's canonical form; the decision is
        ``decide``'s (the most severe over every reading of the URI).
        """
        a = args if isinstance(args, Mapping) else _NO_ARGS
        name, label = tool, tool if kind is Kind.TOOL else f"{kind} {tool}"
        if kind is Kind.RESOURCE:
            forms = _resource_forms(tool)
            name, uri = forms[0] if forms else (tool, tool)
            a = {URI_SLOT: uri}
        traces: list[PolicyTrace] = []
        matched: list[_Rule] = []
        near: _Rule | None = None
        by_policy: dict[int, list[RuleTrace]] = {}
        for r in self._rules:
            failing = self._subjects[r.policy].failing(principal)
            tools_ok = r.selects(kind, name)
            ann_ok = r.annotations_ok(annotations)
            conds = tuple(
                (describe(x.source), x.test(a, principal, paths))
                for x in (*r.principal_conds, *r.arg_conds)
            ) + tuple((describe(f.source), f.test(a, principal, flow)) for f in r.flow_conds)
            ok = failing is None and tools_ok and ann_ok and all(
                v is True if r.effect is Effect.ALLOW else v is not False for _, v in conds)
            if ok:
                matched.append(r)
            elif near is None and failing is None and tools_ok and r.effect is not Effect.DENY:
                near = r
            by_policy.setdefault(r.policy, []).append(RuleTrace(r.ref, r.effect, tools_ok, ann_ok, conds, ok))
        for pi, pol in enumerate(self.policies):
            traces.append(PolicyTrace(pol.id, pol.source, pol.description, self._subjects[pi].failing(principal), tuple(by_policy.get(pi, ()))))
        if kind is Kind.RESOURCE:
            return Explanation(self.decide(principal, tool, args, annotations, kind=kind, paths=paths, flow=flow), tuple(traces))
        top = max((r.effect.severity for r in matched), default=None)
        if top is not None:
            decision = _combine([r for r in matched if r.effect.severity == top], label, flow)
        else:
            decision = _default_deny(label, near, _first_failure(near, principal, a, annotations, paths, flow) if near else None)
        return Explanation(decision, tuple(traces))


def _resource_forms(name: str) -> tuple[tuple[str, str], ...] | None:
    """``UPSTREAM/URI`` -> every reading ``(UPSTREAM/FORM, FORM)`` of the URI; None if unjudgeable."""
    upstream, sep, uri = name.partition("/")
    if not sep:
        return None
    forms = uri_forms(uri)
    return None if forms is None else tuple((f"{upstream}/{f}", f) for f in forms)


class _Index:
    """The rules of one kind, indexed: upstream -> literal name -> rules, and upstream -> literal
    prefix of a name glob -> rules (so a lookup only tries the globs that share the name's prefix),
    plus the rules whose upstream is itself a glob.  Resource URIs are indexed by upstream only."""

    def __init__(self, kind: Kind, rules: list[_Rule]) -> None:
        self.kind = kind
        self.by_upstream: dict[str, _Bucket] = {}
        self.any_upstream: list[_Rule] = []
        self.cache: dict[str, _Candidates] = {}
        for r in rules:
            for pattern in r.rule.selectors(kind):
                up, rest = split_tool(pattern)
                if not is_literal(up):
                    self.any_upstream.append(r)
                    continue
                bucket = self.by_upstream.setdefault(up, _Bucket({}, {}, ()))
                if kind is Kind.RESOURCE:
                    bucket.globs.setdefault("", []).append(r)
                elif is_literal(rest):
                    bucket.literal.setdefault(rest, []).append(r)
                else:
                    prefix = rest[: min(i for i in (rest.find("*"), rest.find("?")) if i >= 0)]
                    bucket.globs.setdefault(prefix, []).append(r)
        for bucket in self.by_upstream.values():
            bucket.lengths = tuple(sorted({len(k) for k in bucket.globs}))

    def candidates(self, name: str) -> _Candidates:
        found = self.cache.get(name)
        if found is not None:
            return found
        up, rest = split_tool(name)
        picked: dict[int, _Rule] = {}
        bucket = self.by_upstream.get(up)
        tried: list[_Rule] = list(self.any_upstream)
        if bucket is not None:
            for r in bucket.literal.get(rest, ()):
                picked[r.order] = r
            for n in bucket.lengths:
                tried.extend(bucket.globs.get(rest[:n], ()))
        kind = self.kind
        for r in tried:
            if r.order not in picked and r.selects(kind, name):
                picked[r.order] = r
        ordered = [picked[k] for k in sorted(picked)]
        # a deny hides at list time when nothing but the URI (known then) conditions it
        resource = kind is Kind.RESOURCE
        deny = tuple(r for r in ordered if r.effect is Effect.DENY)
        approve = tuple(r for r in ordered if r.effect is Effect.APPROVE)
        allow = tuple(r for r in ordered if r.effect is Effect.ALLOW)
        found = _Candidates(
            deny, approve, allow,
            tuple(r for r in ordered if r.effect is not Effect.DENY),
            tuple(r for r in deny if not (r.argument_conds if resource else r.arg_conds) and not r.flow_conds),
            tuple((tier, is_allow) for tier, is_allow in ((deny, False), (approve, False), (allow, True)) if tier),
        )
        if len(self.cache) >= _CACHE_MAX:
            self.cache.clear()
        self.cache[name] = found
        return found
