"""Globs and paths, compiled once at load.

Globs know only ``*`` (any run of characters) and ``?`` (one character); everything else is
literal, so a policy author never trips over regex or bracket syntax.  In tool names ``*`` stays
inside one segment: ``fs/*`` never matches ``fs/a/b``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

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


# --------------------------------------------------------------------------- paths


def normalise_path(path: str) -> tuple[bool, tuple[str, ...]] | None:
    """``(absolute, components)`` with ``.``, ``..`` and empty segments resolved lexically.

    None when the path cannot be judged safely: it contains a NUL or a backslash (a separator
    on some servers, a filename character on others), it starts with ``~`` (servers such as
    server-filesystem expand it to a home directory), or a relative path climbs above its start.
    ``..`` at an absolute root stays at the root, as the kernel does.
    """
    if not path or "\x00" in path or "\\" in path or path.startswith("~"):
        return None
    absolute = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            elif not absolute:
                return None
            continue
        out.append(part)
    return absolute, tuple(out)


def under_matcher(root: str) -> Matcher:
    """``value`` is ``root`` or inside it, after normalising both; never across absolute/relative."""
    norm = normalise_path(root)
    if norm is None:
        return lambda _value: False
    absolute, parts = norm
    n = len(parts)

    def under(value: str) -> bool:
        got = normalise_path(value)
        return got is not None and got[0] == absolute and got[1][:n] == parts

    return under
