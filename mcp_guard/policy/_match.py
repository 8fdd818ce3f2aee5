"""Globs and paths, compiled once at load.

Globs know only ``*`` (any run of characters) and ``?`` (one character); everything else is
literal, so a policy author never trips over regex or bracket syntax.  In tool names ``*`` stays
inside one segment: ``fs/*`` never matches ``fs/a/b``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from mcp_guard.paths import canonical_uri, normalise_path

__all__ = ["Matcher", "glob_covers", "glob_matcher", "glob_regex", "is_literal", "normalise_path", "resource_matcher",
           "split_resource_selector", "split_tool"]

Matcher = Callable[[str], bool]


def glob_regex(pattern: str, *, segment: bool = False) -> re.Pattern[str]:
    star = "[^/]*" if segment else ".*"
    one = "[^/]" if segment else "."
    parts = [star if ch == "*" else one if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


def is_literal(pattern: str) -> bool:
    return "*" not in pattern and "?" not in pattern


def glob_matcher(patterns: tuple[str, ...], *, segment: bool = False) -> Matcher:
    """One predicate for a list of globs: literals are a set lookup, the rest one alternation."""
    if not patterns:
        return _never  # shared: a rule without this kind of selector allocates nothing for it
    literals = frozenset(p for p in patterns if is_literal(p))
    globs = [glob_regex(p, segment=segment).pattern for p in patterns if not is_literal(p)]
    if not globs:
        return literals.__contains__
    rx = re.compile("|".join(f"(?:{g})" for g in globs), re.DOTALL)
    full = rx.fullmatch
    if not literals:
        return lambda s: full(s) is not None
    return lambda s: s in literals or full(s) is not None


def glob_covers(wide: str, narrow: str) -> bool:
    """True if every name ``narrow`` matches is matched by ``wide`` (sound, not complete).

    Only star-only patterns are compared: a ``?`` could match a literal ``*`` of ``narrow``.
    """
    if wide == narrow:
        return True
    if "?" in wide or "?" in narrow:
        return False
    return glob_regex(wide, segment=True).fullmatch(narrow) is not None


def split_tool(name: str) -> tuple[str, str]:
    """``"fs/read_file"`` -> ``("fs", "read_file")``; upstream names never contain ``/``."""
    upstream, sep, tool = name.partition("/")
    return (upstream, tool) if sep else ("", name)


def split_resource_selector(pattern: str) -> tuple[str, str]:
    """``"docs/file:///srv/*"`` -> ``("docs", "file:///srv/*")`` (split at the first ``/``)."""
    upstream, _sep, rest = pattern.partition("/")
    return upstream, rest


def resource_matcher(patterns: tuple[str, ...]) -> Matcher:
    """One predicate over ``UPSTREAM/URI`` names: the upstream part is a segment glob, the URI
    part a glob over the whole URI (``*`` crosses ``/``), so ``docs/*`` is every resource of docs."""
    if not patterns:
        return _never
    alts = []
    for p in patterns:
        up, uri = split_resource_selector(p)
        uri = canonical_uri(uri)  # requests are matched in their canonical form
        alts.append(f"(?:{glob_regex(up, segment=True).pattern}/{glob_regex(uri).pattern})")
    full = re.compile("|".join(alts), re.DOTALL).fullmatch
    return lambda s: full(s) is not None


def template_fit(upstream: str, template: str, selectors: Iterable[str], uri_ops: Iterable[tuple[str, Any]]) -> tuple[bool, bool]:
    """How a rule's resource ``selectors`` (and the operators of its ``uri`` conditions) meet an
    RFC 6570 template of ``upstream``: ``(meets, covers)`` — some expansion could be selected and
    satisfy every ``equals``, ``in`` and ``glob`` (other operators are assumed to hold), and every
    expansion is selected (sound, not complete: only star-only selectors are compared)."""
    shape = _TEMPLATE_EXPR.sub("*", canonical_uri(template))  # each {expression} is any text
    named = [canonical_uri(uri) for up, uri in map(split_resource_selector, selectors)
             if glob_regex(up, segment=True).fullmatch(upstream)]
    meets = any(globs_meet(uri, shape) for uri in named)
    for op, operand in uri_ops:
        if op in ("equals", "glob") and isinstance(operand, str):
            meets = meets and globs_meet(canonical_uri(operand), shape)
        elif op == "in" and isinstance(operand, list):
            meets = meets and any(globs_meet(canonical_uri(v), shape) for v in operand if isinstance(v, str))
    covers = any("?" not in uri and glob_regex(uri).fullmatch(shape) is not None for uri in named)
    return meets, covers


_TEMPLATE_EXPR = re.compile(r"\{[^{}]*\}")


def globs_meet(a: str, b: str) -> bool:
    """Whether some text matches both globs (``*`` any run, ``?`` one character): a walk over
    the pairs of positions, at most (len(a)+1)(len(b)+1) of them."""
    n, m = len(a), len(b)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == n and j == m:
            return True
        ca, cb = a[i] if i < n else None, b[j] if j < m else None
        if ca == "*":
            todo.append((i + 1, j))
        if cb == "*":
            todo.append((i, j + 1))
        if ca is not None and cb is not None and (ca in "*?" or cb in "*?" or ca == cb):
            todo.append((i if ca == "*" else i + 1, j if cb == "*" else j + 1))
    return False


def _never(_s: str) -> bool:
    return False
