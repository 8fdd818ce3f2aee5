"""Which content of an answer brought a label: the whole answer, or only its ``parts``.

A part path is dot-separated keys, ``[*]`` for every list element and ``*`` for every value of a
map (``reviews.*`` = the review texts, never the hotel names they are keyed by); keys are never
selected.  Parts are read from the answer's structured content, or from a text answer that parses
as JSON; an answer with neither counts whole (fail closed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mcp_guard.flow.text import strings_in

_SEGMENT = re.compile(r"^(\*|[^.\[\]*]+)((?:\[\*\])*)$")


def _select(value: Any, path: str) -> list[Any]:
    values = [value]
    for seg in path.split("."):
        m = _SEGMENT.fullmatch(seg)
        if m is None:
            return []
        name, stars = m.group(1), len(m.group(2)) // 3
        nxt: list[Any] = []
        for v in values:
            if not isinstance(v, dict):
                continue
            if name == "*":
                nxt.extend(v.values())
            elif name in v:
                nxt.append(v[name])
        for _ in range(stars):
            nxt = [x for v in nxt if isinstance(v, list) for x in v]
        values = nxt
    return values


def _structured(answer: Mapping[str, Any]) -> Any:
    """The answer's structured content, or the first text item that parses as a JSON object or list."""
    structured = answer.get("structuredContent")
    if isinstance(structured, dict | list):
        return structured
    items = answer.get("content")
    if not isinstance(items, list):
        items = answer.get("contents")  # resources/read
    for item in items if isinstance(items, list) else ():
        text = item.get("text") if isinstance(item, dict) else None
        if isinstance(text, str) and text.lstrip()[:1] in ("{", "["):
            try:
                parsed = json.loads(text)
            except ValueError:
                continue
            if isinstance(parsed, dict | list):
                return parsed
    return None


def content_of(answer: Any, parts: Sequence[str] | None) -> str:
    """The text of ``answer`` that counts for ``carries``: every string in it (``_meta`` aside),
    or only the strings of its ``parts`` when it has structured content."""
    if parts is not None and isinstance(answer, Mapping):
        structured = _structured(answer)
        if structured is not None:
            out: list[str] = []
            for path in parts:
                for v in _select(structured, path):
                    strings_in(v, out, keys=False)
            return "\n".join(out)
    if isinstance(answer, Mapping):
        answer = {k: v for k, v in answer.items() if k != "_meta"}
    return "\n".join(strings_in(answer))


__all__ = ["content_of"]
