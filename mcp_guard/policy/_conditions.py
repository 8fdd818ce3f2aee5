"""Conditions compiled to predicates: type-strict, missing = false, no parsing at decision time."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.identity import Principal
from mcp_guard.policy._match import glob_matcher, under_matcher
from mcp_guard.policy.model import Condition

MISSING: Any = object()
Getter = Callable[[Mapping[str, Any], Principal], Any]
Pred = Callable[[Any], bool]


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


def _membership(values: tuple[Any, ...]) -> Pred:
    """``v in values``, type-strict; a set lookup when the operand is all strings or all numbers."""
    if all(isinstance(x, str) for x in values):
        strs = frozenset(values)
        return lambda v: isinstance(v, str) and v in strs
    if all(_is_number(x) for x in values):
        nums = frozenset(values)
        return lambda v: _is_number(v) and v in nums
    return lambda v: any(strict_equal(v, x) for x in values)


def _op(op: str, operand: Any) -> Pred:
    if op == "equals":
        if isinstance(operand, str):
            return lambda v: isinstance(v, str) and v == operand
        return lambda v: strict_equal(v, operand)
    if op == "in":
        return _membership(operand)
    if op == "not_in":
        member = _membership(operand)
        return lambda v: not member(v)
    if op == "glob":
        match = glob_matcher((operand,))
        return lambda v: isinstance(v, str) and match(v)
    if op == "regex":
        full = re.compile(operand).fullmatch
        return lambda v: isinstance(v, str) and full(v) is not None
    if op == "under":
        under = under_matcher(operand)
        return lambda v: isinstance(v, str) and under(v)
    if op == "max_length":
        return lambda v: isinstance(v, str | list | tuple) and len(v) <= operand
    if op == "min":
        return lambda v: _is_number(v) and v >= operand
    if op == "max":
        return lambda v: _is_number(v) and v <= operand
    raise AssertionError(f"unknown operator {op}")  # parse rejects these


def _getter(key: str) -> tuple[Getter, bool]:
    """A value getter for ``key`` and whether it fans out over ``[*]``."""
    if key == "user":
        return (lambda _a, p: p.user), False
    if key == "agent":
        return (lambda _a, p: p.agents[-1] if p.agents else MISSING), False
    if key == "purpose":
        return (lambda _a, p: MISSING if p.purpose is None else p.purpose), False
    if key == "chain.depth":
        return (lambda _a, p: len(p.agents)), False
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
        for name, stars in steps:
            nxt: list[Any] = []
            for v in values:
                if not isinstance(v, dict) or name not in v:
                    return MISSING
                nxt.append(v[name])
            for _ in range(stars):
                flat: list[Any] = []
                for v in nxt:
                    if not isinstance(v, list):
                        return MISSING
                    flat.extend(v)
                nxt = flat
            values = nxt
        return values if fans else values[0]

    return get, fans


@dataclass(frozen=True, slots=True)
class Compiled:
    source: Condition
    get: Getter
    fans: bool
    pred: Pred
    presence: bool | None  # `present: x` operand, if any

    def test(self, args: Mapping[str, Any], principal: Principal) -> bool:
        value = self.get(args, principal)
        if value is MISSING:
            return self.presence is False
        if self.presence is False:
            return False
        if self.fans:
            # every element must hold, and there must be at least one element
            return bool(value) and all(v is not MISSING and self.pred(v) for v in value)
        return self.pred(value)


def compile_condition(cond: Condition) -> Compiled:
    get, fans = _getter(cond.key)
    preds = [_op(op, v) for op, v in cond.ops if op != "present"]
    presence = next((v for op, v in cond.ops if op == "present"), None)
    pred: Pred
    if not preds:
        pred = _true
    elif len(preds) == 1:
        pred = preds[0]
    else:
        pred = lambda v: all(p(v) for p in preds)  # noqa: E731
    return Compiled(cond, get, fans, pred, presence)


def _true(_v: Any) -> bool:
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
        }[op])
    subject = f"every {cond.key}" if "[*]" in cond.key else cond.key
    return f"{subject} must {' and '.join(parts)}"
