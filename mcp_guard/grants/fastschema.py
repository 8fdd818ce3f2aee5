"""A compiled checker for the everyday subset of JSON Schema 2020-12 used in grant ``arguments``.

``jsonschema``'s validator costs ~30 µs per call even for a three-keyword schema, which alone
would eat the hot-path budget.  Schemas that use only the keywords below are compiled into plain
closures (~1 µs); anything else returns None and the caller keeps using ``jsonschema``.  Both
must agree on every instance — tests/grants/test_grant_fastschema.py checks it differentially.
The slow validator still produces the (value-free) explanation when a call is refused.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sized
from contextvars import ContextVar
from typing import Any

from mcp_guard.paths import PathContext, Under

Check = Callable[[Any], bool]
UNDER = "x-under"  # path-safe containment: the value is a path (or file:// URI) under this root
# Where the upstream resolves relative paths, for ``x-under`` during one ``check_call``.
PATHS: ContextVar[PathContext | None] = ContextVar("mcp_guard_grant_paths", default=None)


@functools.lru_cache(maxsize=1024)
def _under(root: str) -> Under:
    return Under(root)


def under_valid(root: Any, instance: Any) -> bool:
    """``x-under``: ``instance`` is a string judged under ``root`` (normalised as the policy
    ``under`` operator does); anything unjudgeable — a relative path without a working
    directory, ``~``, another URI scheme, a non-string, an unusable root — is invalid."""
    if not isinstance(root, str) or not root:
        return False
    return _under(root).judge(instance, PATHS.get()) is True

_ANNOTATIONS = frozenset({"title", "description", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly"})
_SUPPORTED = _ANNOTATIONS | {
    "type", "enum", "const", "properties", "required", "additionalProperties", "pattern", "minLength",
    "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "items", "minItems", "maxItems", UNDER,
}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


_TYPES: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": _is_number,
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer()),
}


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality as JSON Schema defines it: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def compile_fast(schema: Any) -> Check | None:
    """A checker equivalent to Draft 2020-12 validation, or None if the schema leaves the subset."""
    if schema is True:
        return lambda x: True
    if schema is False:
        return lambda x: False
    if not isinstance(schema, dict) or set(schema) - _SUPPORTED:
        return None
    checks: list[Check] = []
    t = schema.get("type")
    if t is not None:
        names = [t] if isinstance(t, str) else t
        if not isinstance(names, list) or not all(isinstance(n, str) and n in _TYPES for n in names):
            return None
        preds = [_TYPES[n] for n in names]
        checks.append(lambda x: any(p(x) for p in preds))
    if "enum" in schema:
        options = schema["enum"]
        if not isinstance(options, list):
            return None
        checks.append(lambda x: any(json_equal(x, o) for o in options))
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda x: json_equal(x, const))
    for key, op in (("minLength", "ge"), ("maxLength", "le")):
        if key in schema:
            n = schema[key]
            if not isinstance(n, int) or isinstance(n, bool):
                return None
            checks.append(_length(n, op, str))
    for key, op in (("minItems", "ge"), ("maxItems", "le")):
        if key in schema:
            n = schema[key]
            if not isinstance(n, int) or isinstance(n, bool):
                return None
            checks.append(_length(n, op, list))
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            return None
        try:
            rx = re.compile(schema["pattern"])
        except re.error:
            return None
        checks.append(lambda x: not isinstance(x, str) or rx.search(x) is not None)
    if UNDER in schema:
        root = schema[UNDER]
        if not isinstance(root, str) or not root or not _under(root).usable:
            return None  # jsonschema's x-under refuses every instance
        judge = _under(root).judge
        checks.append(lambda x: judge(x, PATHS.get()) is True)
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            bound = schema[key]
            if not _is_number(bound) or (isinstance(bound, float) and not math.isfinite(bound)):
                return None
            checks.append(_bound(key, bound))
    props: dict[str, Check] = {}
    if "properties" in schema:
        if not isinstance(schema["properties"], dict):
            return None
        for name, sub in schema["properties"].items():
            c = compile_fast(sub)
            if c is None:
                return None
            props[name] = c
    if props:
        checks.append(_properties(tuple(props.items())))
    if "required" in schema:
        req = schema["required"]
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            return None
        checks.append(lambda x: not isinstance(x, dict) or all(r in x for r in req))
    if "additionalProperties" in schema:
        extra = compile_fast(schema["additionalProperties"])
        if extra is None:
            return None
        known = frozenset(schema.get("properties", {}))
        checks.append(lambda x: not isinstance(x, dict) or all(extra(v) for k, v in x.items() if k not in known))
    if "items" in schema:
        each = compile_fast(schema["items"])
        if each is None:
            return None
        checks.append(lambda x: not isinstance(x, list) or all(each(v) for v in x))
    if len(checks) == 1:
        return checks[0]
    return _all(tuple(checks))


# Plain loops instead of all(<generator>): this runs on every call, and generators cost.


def _all(checks: tuple[Check, ...]) -> Check:
    def check(x: Any) -> bool:
        for c in checks:  # noqa: SIM110 - a loop is measurably cheaper than all(<genexpr>)
            if not c(x):
                return False
        return True

    return check


def _properties(items: tuple[tuple[str, Check], ...]) -> Check:
    def check(x: Any) -> bool:
        if isinstance(x, dict):
            for k, c in items:
                if k in x and not c(x[k]):
                    return False
        return True

    return check


def _length(n: int, op: str, kind: type[Sized]) -> Check:
    if op == "ge":
        return lambda x: not isinstance(x, kind) or len(x) >= n
    return lambda x: not isinstance(x, kind) or len(x) <= n


def _bound(key: str, bound: float) -> Check:
    if key == "minimum":
        return lambda x: not _is_number(x) or x >= bound
    if key == "maximum":
        return lambda x: not _is_number(x) or x <= bound
    if key == "exclusiveMinimum":
        return lambda x: not _is_number(x) or x > bound
    return lambda x: not _is_number(x) or x < bound
