"""Conditions compiled to three-valued predicates: type-strict, no parsing at decision time.

A condition answers True, False or None (*unjudgeable*: the value has the wrong type for the
operator, or is a path or URI that cannot be placed).  The engine turns None into "no match" for
an allow rule and "match" for a deny or approve rule, so an unjudgeable value never slips past a
deny.  A missing argument is a fact, not an unknown: its condition is False (``present: false``
is True).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.identity import Principal
from mcp_guard.paths import PathContext, Tri, Under, canonical_uri, nfc
from mcp_guard.policy._match import glob_matcher
from mcp_guard.policy.model import URI_KEY, Condition

MISSING: Any = object()
WRONG: Any = object()  # a container of the wrong type on the way to the value
URI_SLOT: Any = object()  # the key the resource URI travels under (never a JSON key, so never forged)
Getter = Callable[[Mapping[str, Any], Principal], Any]
Pred = Callable[[Any, PathContext | None], Tri]


def strict_equal(a: Any, b: Any) -> bool:
    """JSON equality without Python's coercions: ``True != 1``, ``"50" != 50``; ``1 == 1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    return False


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def json_type(v: Any) -> str:
    """The JSON type of ``v`` (``boolean`` is not a ``number``), for "the wrong type" judgements."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if v is None:
        return "null"
    if isinstance(v, list | tuple):
        return "array"
    return "object" if isinstance(v, dict) else "other"


def _membership(values: tuple[Any, ...]) -> Pred:
    """``v in values``, type-strict; a value of a type no member has is unjudgeable (None)."""
    if not values:
        return lambda v, _c: False
    if all(isinstance(x, str) for x in values):
        strs = frozenset(nfc(x) for x in values)
        return lambda v, _c: (nfc(v) in strs) if isinstance(v, str) else None
    if all(_is_number(x) for x in values):
        nums = frozenset(values)
        return lambda v, _c: (v in nums) if _is_number(v) else None
    types = frozenset(json_type(x) for x in values)
    norm = tuple(nfc(x) if isinstance(x, str) else x for x in values)
    return lambda v, _c: any(strict_equal(nfc(v) if isinstance(v, str) else v, x) for x in norm) if json_type(v) in types else None


def _op(op: str, operand: Any, *, uri: bool) -> Pred:
    """One operator as a three-valued predicate: True, False, or None when the value cannot be
    judged by it (the wrong type, a path or URI that cannot be placed)."""
    if op == "equals":
        if isinstance(operand, str):
            text = nfc(operand)
            return lambda v, _c: (nfc(v) == text) if isinstance(v, str) else None
        want = json_type(operand)
        return lambda v, _c: strict_equal(v, operand) if json_type(v) == want else None
    if op == "in":
        return _membership(operand)
    if op == "not_in":
        member = _membership(operand)

        def not_in(v: Any, c: PathContext | None) -> Tri:
            got = member(v, c)
            return None if got is None else not got

        return not_in
    if op == "glob":
        match = glob_matcher((nfc(operand),))
        return lambda v, _c: match(nfc(v)) if isinstance(v, str) else None
    if op == "regex":
        full = re.compile(nfc(operand)).fullmatch
        return lambda v, _c: (full(nfc(v)) is not None) if isinstance(v, str) else None
    if op == "under":
        judge = Under(operand).judge
        if uri:
            return lambda v, c: judge(v, c, uri=True)
        return judge
    if op == "max_length":
        return lambda v, _c: (len(v) <= operand) if isinstance(v, str | list | tuple) else None
    if op == "min":
        return lambda v, _c: (v >= operand) if _is_number(v) else None
    if op == "max":
        return lambda v, _c: (v <= operand) if _is_number(v) else None
    raise AssertionError(f"unknown operator {op}")  # parse rejects these


def _getter(key: str) -> tuple[Getter, bool]:
    """A value getter for ``key`` and whether it fans out over ``[*]``.

    A fanning getter returns one entry per element: the value, ``MISSING`` (the element lacks the
    key) or ``WRONG`` (a list where an object was expected, or the reverse).  A plain getter
    returns the value, ``MISSING`` or ``WRONG``.
    """
    if key == "user":
        return (lambda _a, p: p.user), False
    if key == "agent":
        return (lambda _a, p: p.agents[-1] if p.agents else MISSING), False
    if key == "purpose":
        return (lambda _a, p: MISSING if p.purpose is None else p.purpose), False
    if key == "chain.depth":
        return (lambda _a, p: len(p.agents)), False
    if key == URI_KEY:
        return (lambda a, _p: a.get(URI_SLOT, MISSING)), False
    steps: list[tuple[str, int]] = []  # (name, number of [*] after it)
    for seg in key.split(".")[1:]:
        name = seg.replace("[*]", "")
        steps.append((name, (len(seg) - len(name)) // 3))
    fans = any(n for _, n in steps)
    if len(steps) == 1 and not fans:
        name = steps[0][0]
        return (lambda a, _p: a.get(name, MISSING)), False

    def get(args: Mapping[str, Any], _p: Principal) -> Any:
        values: list[Any] = [args]
        for depth, (name, stars) in enumerate(steps):
            nxt: list[Any] = []
            for v in values:
                if v is MISSING or v is WRONG:
                    nxt.append(v)
                elif not isinstance(v, dict):
                    nxt.append(WRONG)
                elif name not in v:
                    nxt.append(MISSING)
                else:
                    nxt.append(v[name])
            if depth == 0 and nxt[0] is MISSING:
                return MISSING  # the argument itself is absent
            for _ in range(stars):
                flat: list[Any] = []
                for v in nxt:
                    if isinstance(v, list):
                        flat.extend(v)
                    else:
                        flat.append(v if v is MISSING or v is WRONG else WRONG)
                nxt = flat
            values = nxt
        return values if fans else values[0]

    return get, fans


getter = _getter  # for the flow conditions (policy/_flow.py)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled condition, read the way its rule reads it.  For a ``[*]`` key an allow rule
    (``existential`` False) needs every element to hold; a deny or approve rule (``existential``
    True) needs one, so a list can never hide one bad element from a deny."""

    source: Condition
    get: Getter
    fans: bool
    pred: Pred
    presence: bool | None  # `present: x` operand, if any
    existential: bool = False

    def test(self, args: Mapping[str, Any], principal: Principal, ctx: PathContext | None = None) -> Tri:
        value = self.get(args, principal)
        if value is MISSING:
            return self.presence is False
        if self.presence is False:
            return False
        if value is WRONG:
            return None
        if not self.fans:
            return self.pred(value, ctx)
        return self._some(value, ctx) if self.existential else self._every(value, ctx)

    def _every(self, value: list[Any], ctx: PathContext | None) -> Tri:
        if not value:
            return False  # every element must hold, and there must be at least one
        result: Tri = True
        for v in value:
            if v is MISSING:
                return False
            got = None if v is WRONG else self.pred(v, ctx)
            if got is False:
                return False
            if got is None:
                result = None
        return result

    def _some(self, value: list[Any], ctx: PathContext | None) -> Tri:
        result: Tri = False
        for v in value:
            if v is MISSING:
                continue
            got = None if v is WRONG else self.pred(v, ctx)
            if got is True:
                return True
            if got is None:
                result = None
        return result


def _canonical_operand(op: str, operand: Any) -> Any:
    """A ``uri`` operand in the canonical form the URI is judged in, so ``%C3%A9`` in a policy
    equals ``é`` in a request (``under`` and ``regex`` operands are left as written)."""
    def canon(x: Any) -> Any:
        return canonical_uri(x) if isinstance(x, str) else x

    if op in ("equals", "glob"):
        return canon(operand)
    if op in ("in", "not_in"):
        return tuple(canon(x) for x in operand)
    return operand


def compile_condition(cond: Condition, *, existential: bool = False) -> Compiled:
    """``existential``: the condition belongs to a deny or approve rule (see ``Compiled``)."""
    get, fans = _getter(cond.key)
    ops = [(op, _canonical_operand(op, v) if cond.is_uri else v) for op, v in cond.ops]
    preds = [_op(op, v, uri=cond.is_uri) for op, v in ops if op != "present"]
    presence = next((v for op, v in cond.ops if op == "present"), None)
    pred: Pred
    if not preds:
        pred = _true
    elif len(preds) == 1:
        pred = preds[0]
    else:
        pred = _all(tuple(preds))
    return Compiled(cond, get, fans, pred, presence, existential and fans)


def _all(preds: tuple[Pred, ...]) -> Pred:
    """Three-valued AND: False if any is False, else None if any is None, else True."""

    def every(v: Any, c: PathContext | None) -> Tri:
        result: Tri = True
        for p in preds:
            got = p(v, c)
            if got is False:
                return False
            if got is None:
                result = None
        return result

    return every


def _true(_v: Any, _c: PathContext | None) -> Tri:
    return True


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)


def describe(cond: Condition) -> str:
    """What the condition requires, in policy terms only: ``args.path must be under /srv/tickets``."""
    parts = []
    for op, v in cond.ops:
        parts.append({
            "equals": f"equal {_show(v)}",
            "in": f"be one of {_show(v)}",
            "not_in": f"not be one of {_show(v)}",
            "glob": f"match {_show(v)}",
            "regex": f"match the pattern {_show(v)}",
            "under": f"be under {_show(v)}",
            "max_length": f"be at most {v} long",
            "min": f"be at least {v}",
            "max": f"be at most {v}",
            "present": "be present" if v else "be absent",
            "any_of": f"include one of {_show(v)}",
            "all_of": f"include all of {_show(v)}",
            "none_of": f"include none of {_show(v)}",
            "carries": f"carry content labelled {_show(v.get('labels') if isinstance(v, dict) else v)}",
        }[op])
    subject = f"every {cond.key}" if "[*]" in cond.key else cond.key
    return f"{subject} must {' and '.join(parts)}"
