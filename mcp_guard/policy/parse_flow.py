"""The information-flow parts of a policy file: top-level ``labels:`` entries and the operands of
``session.labels`` and ``carries`` conditions (docs/policies.md), checked like the rest with
``file:line:col`` problems.  ``parse.py`` hands its reader and its selector and condition readers
in, so this module never imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from mcp_guard.policy.document import LABEL, MATCHES, PART, UPSTREAM, CarriesDoc, LabelEntryDoc, keys
from mcp_guard.policy.model import SELECTORS, Condition, LabelEntry
from mcp_guard.yamlsrc import Path, Problem, SourceReader, did_you_mean

_ENTRY = keys(LabelEntryDoc)
_CARRIES = keys(CarriesDoc)

Select = Callable[[SourceReader, dict[str, Any], Path, str], dict[str, tuple[str, ...]] | None]
ReadCondition = Callable[[SourceReader, Any, Any, Path], Condition | None]


def label_list(r: SourceReader, value: Any, path: Path, what: str) -> tuple[str, ...] | None:
    """A non-empty list of label names (``[a-z][a-z0-9_-]*``)."""
    if not isinstance(value, list) or not value:
        r.error(path, f"{what} needs a non-empty list of labels", f"for example {what.strip('`')}: [untrusted]")
        return None
    ok = True
    for i, item in enumerate(value):
        if not isinstance(item, str) or not LABEL.match(item):
            r.error((*path, i), f"label `{item}` must be lower-case letters, digits, _ and - (starting with a letter)")
            ok = False
    return tuple(value) if ok else None


def flow_operand(r: SourceReader, op: str, value: Any, path: Path) -> bool:
    """Check the operand of ``any_of``/``all_of``/``none_of`` or ``carries``; True if usable."""
    if op != "carries":
        return label_list(r, value, path, f"`{op}`") is not None
    if isinstance(value, dict):
        unknown = set(value) - set(_CARRIES)
        for key in unknown:
            r.error((*path, key), f"unknown key `{key}` in `carries`", did_you_mean(str(key), _CARRIES) or "carries takes labels and match", value=False)
        match = value.get("match", "content")
        if match not in MATCHES:
            r.error((*path, "match"), f"`match` must be content or token, not `{match}`")
            return False
        if "labels" not in value:
            r.error(path, "`carries` needs `labels`", "carries: {labels: [untrusted], match: token}", value=False)
            return False
        return not unknown and label_list(r, value["labels"], (*path, "labels"), "`labels`") is not None
    return label_list(r, value, path, "`carries`") is not None


def _parts(r: SourceReader, value: Any, path: Path) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value:
        r.error(path, "`parts` needs a non-empty list of paths", 'for example parts: ["subject", "reviews.*", "items[*].body"]')
        return None
    ok = True
    for i, item in enumerate(value):
        if not isinstance(item, str) or not PART.match(item):
            r.error((*path, i), f"part `{item}` must be a dotted path of keys, `*` (every value of a map) and `[*]` (every list element)")
            ok = False
    return tuple(value) if ok else None


def label_entry(r: SourceReader, data: Any, path: Path, select: Select, condition: ReadCondition) -> LabelEntry | None:
    """One ``labels:`` entry."""
    if not isinstance(data, dict):
        r.error(path, "a labels entry must be a mapping", "for example {tools: [web/fetch], brings: [untrusted]}")
        return None
    r.unknown_keys(data, path, _ENTRY, "a labels entry", list_all=True)
    ok = not (set(data) - set(_ENTRY))
    brings = label_list(r, data.get("brings"), (*path, "brings") if "brings" in data else path, "`brings`")
    ok = ok and brings is not None
    upstreams: tuple[str, ...] = ()
    selected: dict[str, tuple[str, ...]] | None = {}
    if "upstreams" in data:
        if any(k in data for k in SELECTORS) or "when" in data:
            r.error((*path, "upstreams"), "an `upstreams` entry labels everything those upstreams send; it takes no tools, resources, prompts or when",
                    "write a separate entry for the selectors", value=False)
            ok = False
        raw = data["upstreams"]
        if not isinstance(raw, list) or not raw or not all(isinstance(u, str) and UPSTREAM.match(u) for u in raw):
            r.error((*path, "upstreams"), "`upstreams` needs a non-empty list of upstream names")
            ok = False
        else:
            upstreams = tuple(raw)
    else:
        selected = select(r, data, path, "labels entry")
        ok = ok and selected is not None
    when: list[Condition] = []
    raw_when = data.get("when", {})
    if not isinstance(raw_when, dict):
        r.error((*path, "when"), "`when` must map condition keys to operators")
        ok = False
    else:
        for key, spec in raw_when.items():
            cond = condition(r, key, spec, (*path, "when", key))
            if cond is None:
                ok = False
            elif cond.is_flow:
                r.error((*path, "when", key), "what a request brings cannot depend on the session's labels or their content",
                        "use args.*, uri, user, agent, purpose or chain.depth here", value=False)
                ok = False
            else:
                when.append(cond)
    parts = _parts(r, data["parts"], (*path, "parts")) if "parts" in data else None
    ok = ok and ("parts" not in data or parts is not None)
    if not ok or brings is None or selected is None:
        return None
    return LabelEntry(brings, selected.get("tools", ()), selected.get("resources", ()), selected.get("prompts", ()),
                      upstreams, tuple(when), parts, source=f"{r.smap.file}:{r.smap.at(path)[0]}")


def label_entries(r: SourceReader, data: Any, select: Select, condition: ReadCondition) -> list[LabelEntry]:
    """The ``labels:`` list of one file."""
    if not isinstance(data, list):
        r.error(("labels",), "`labels` must be a list of entries", "- {tools: [web/fetch], brings: [untrusted]}")
        return []
    return [e for i, item in enumerate(data) if (e := label_entry(r, item, ("labels", i), select, condition)) is not None]


def unbrought(entries: Sequence[LabelEntry], tested: Sequence[tuple[str, Problem]]) -> list[Problem]:
    """A warning for every condition testing a label that no ``labels:`` entry brings (a grant's
    starting labels may still bring it, so this is a warning, not an error)."""
    brought = {label for e in entries for label in e.brings}
    return [dataclasses.replace(where, message=f"no `labels:` entry brings `{label}`, so this condition only sees it when a grant starts sessions with it",
                                hint=did_you_mean(label, sorted(brought)), severity="warning")
            for label, where in tested if label not in brought]
