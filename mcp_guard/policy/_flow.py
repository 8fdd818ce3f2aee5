"""Flow conditions and label entries, compiled (docs/policies.md).

``session.labels`` and ``carries`` are judged per request against a ``FlowView`` the caller
builds (the engine never sees the session): they are never cached per principal and never
affect discovery.  ``LabelRules`` answers what a forwarded request brings into the session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext, Tri
from mcp_guard.policy._conditions import MISSING, WRONG, Compiled, compile_condition, getter
from mcp_guard.policy._match import Matcher, glob_matcher, resource_matcher
from mcp_guard.policy.model import SESSION_LABELS, Condition, FlowView, LabelEntry

_NONE: frozenset[str] = frozenset()


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out.append(str(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                out.append(k)
            _strings(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _strings(v, out)


@dataclass(frozen=True, slots=True)
class FlowCond:
    """One ``session.labels`` condition, or the ``carries`` operator of an argument condition."""

    source: Condition
    any_of: frozenset[str] = _NONE
    all_of: frozenset[str] = _NONE
    none_of: frozenset[str] = _NONE
    carries: tuple[str, ...] = ()
    token: bool = False
    get: Any = None
    carried: frozenset[str] = _NONE  # ``carries`` as a set, for the cheap "holds none of them" test

    def test(self, args: Mapping[str, Any], principal: Principal, flow: FlowView | None) -> Tri:
        held = flow.labels if flow is not None else _NONE
        if self.get is None:
            return ((not self.any_of or bool(held & self.any_of)) and self.all_of <= held
                    and not (held & self.none_of))
        value = self.get(args, principal)
        if value is MISSING:
            return False
        if value is WRONG:
            return None
        strings: list[str] = []
        _strings([v for v in value if v is not MISSING and v is not WRONG] if isinstance(value, list) and _fans(self) else value, strings)
        if not strings or flow is None or not (held & self.carried):
            return False
        return flow.carries(strings, self.carries, self.token)

    def involved(self, flow: FlowView | None) -> tuple[str, ...]:
        """The labels this condition tested that the session holds (for the cause sentence)."""
        held = flow.labels if flow is not None else _NONE
        named = (*self.any_of, *self.all_of, *self.none_of, *self.carries)
        return tuple(sorted(label for label in set(named) if label in held))


def _fans(cond: FlowCond) -> bool:
    return "[*]" in cond.source.key


def compile_flow(cond: Condition, *, existential: bool) -> tuple[Compiled | None, FlowCond | None]:
    """Split a condition into its plain part (compiled as usual) and its flow part."""
    if cond.key == SESSION_LABELS:
        ops = dict(cond.ops)
        return None, FlowCond(cond, frozenset(ops.get("any_of", ())), frozenset(ops.get("all_of", ())), frozenset(ops.get("none_of", ())))
    carries = next(v for op, v in cond.ops if op == "carries")
    labels, token = (tuple(carries["labels"]), carries.get("match") == "token") if isinstance(carries, dict) else (tuple(carries), False)
    rest = tuple((op, v) for op, v in cond.ops if op != "carries")
    plain = compile_condition(Condition(cond.key, rest), existential=existential) if rest else None
    get = getter(cond.key)[0]
    return plain, FlowCond(cond, carries=labels, token=token, get=get, carried=frozenset(labels))


@dataclass(frozen=True, slots=True)
class Brought:
    """What one forwarded request brings: per matching entry its labels and ``parts`` (None = the
    whole answer), and the ``labels:`` entries' sources for explanations."""

    entries: tuple[tuple[frozenset[str], tuple[str, ...] | None], ...] = ()

    @property
    def labels(self) -> frozenset[str]:
        out: set[str] = set()
        for labels, _parts in self.entries:
            out |= labels
        return frozenset(out)

    def without(self, label: str) -> Brought:
        """The same, with ``label`` removed (an endorsed source brings no ``untrusted``)."""
        return Brought(tuple((labels - {label}, parts) for labels, parts in self.entries if labels - {label}))


NOTHING = Brought()


@dataclass(frozen=True, slots=True)
class _Entry:
    entry: LabelEntry
    match: dict[Kind, Matcher]
    conds: tuple[Compiled, ...]
    brings: frozenset[str]


_NAMES_MAX = 4096  # (kind, name) -> the entries that select it, cleared when full


class LabelRules:
    """The compiled ``labels:`` entries of a policy set."""

    def __init__(self, entries: tuple[LabelEntry, ...]) -> None:
        self.entries = entries
        self._selecting = tuple(
            _Entry(e, {Kind.TOOL: glob_matcher(e.tools, segment=True), Kind.RESOURCE: resource_matcher(e.resources),
                       Kind.PROMPT: glob_matcher(e.prompts, segment=True)},
                   tuple(compile_condition(c, existential=True) for c in e.when), frozenset(e.brings))
            for e in entries if not e.upstreams)
        self._by_name: dict[tuple[Kind, str], tuple[_Entry, ...]] = {}
        by_upstream: dict[str, set[str]] = {}
        for e in entries:
            for u in e.upstreams:
                by_upstream.setdefault(u, set()).update(e.brings)
        self._upstreams = {u: frozenset(v) for u, v in by_upstream.items()}
        self.known = frozenset(label for e in entries for label in e.brings)

    def upstream(self, upstream: str) -> frozenset[str]:
        """What everything ``upstream`` sends the host brings."""
        return self._upstreams.get(upstream, _NONE)

    def brings(self, principal: Principal, kind: Kind, name: str, args: Mapping[str, Any], paths: PathContext | None,
               uri_args: Mapping[str, Any] | None = None) -> Brought:
        """What a forwarded request for ``name`` brings.  A condition that cannot be judged brings
        the label (fail closed: more labels only ever restrict)."""
        if not self.entries:
            return NOTHING
        found: list[tuple[frozenset[str], tuple[str, ...] | None]] = []
        a = uri_args if kind is Kind.RESOURCE and uri_args is not None else args
        selecting = self._by_name.get((kind, name))
        if selecting is None:  # which entries select the name: a pure function of it, kept
            if len(self._by_name) >= _NAMES_MAX:
                self._by_name.clear()
            selecting = self._by_name[kind, name] = tuple(e for e in self._selecting if e.match[kind](name))
        for e in selecting:
            if all(c.test(a, principal, paths) is not False for c in e.conds):
                found.append((e.brings, e.entry.parts))
        up = self.upstream(name.partition("/")[0])
        if up:
            found.append((up, None))
        return Brought(tuple(found)) if found else NOTHING
