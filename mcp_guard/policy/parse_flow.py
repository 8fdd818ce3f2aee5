"""The information-flow parts of a policy file: top-level ``labels:`` entries (docs/policies.md),
validated by ``document.LabelEntryDoc`` and checked here for what spans their keys, with
``file:line:col`` problems.  ``parse.py`` hands its reader and its selector and condition readers
in, so this module never imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from mcp_guard.policy.document import ConditionDoc, LabelEntryDoc
from mcp_guard.policy.model import SELECTORS, Condition, LabelEntry
from mcp_guard.yamlsrc import Path, Problem, SourceReader, did_you_mean

Select = Callable[[SourceReader, LabelEntryDoc, Path, str], dict[str, tuple[str, ...]] | None]
ReadCondition = Callable[[SourceReader, str, ConditionDoc, Path], Condition | None]


def label_entry(r: SourceReader, doc: LabelEntryDoc | None, path: Path, select: Select, condition: ReadCondition) -> LabelEntry | None:
    """One validated ``labels:`` entry, checked for what spans its keys."""
    if doc is None:
        return None
    ok = doc.valid
    given = doc.model_fields_set
    selected: dict[str, tuple[str, ...]] | None = {}
    if "upstreams" in given:
        if given & {*SELECTORS, "when"}:
            r.error((*path, "upstreams"), "an `upstreams` entry labels everything those upstreams send; it takes no tools, resources, prompts or when",
                    "write a separate entry for the selectors", value=False)
            ok = False
    else:
        selected = select(r, doc, path, "labels entry")
    when: list[Condition] = []
    for key, spec in (doc.when or {}).items():
        cond = condition(r, key, spec, (*path, "when", key)) if spec is not None else None
        if cond is None:
            ok = False
        elif cond.is_flow:
            r.error((*path, "when", key), "what a request brings cannot depend on the session's labels or their content",
                    "use args.*, uri, user, agent, purpose or chain.depth here", value=False)
            ok = False
        else:
            when.append(cond)
    if not ok or selected is None:
        return None
    return LabelEntry(tuple(doc.brings), selected.get("tools", ()), selected.get("resources", ()), selected.get("prompts", ()),
                      tuple(doc.upstreams or ()), tuple(when), tuple(doc.parts) if doc.parts is not None else None,
                      source=f"{r.smap.file}:{r.smap.at(path)[0]}")


def label_entries(r: SourceReader, docs: list[LabelEntryDoc | None], select: Select, condition: ReadCondition) -> list[LabelEntry]:
    """The ``labels:`` list of one file."""
    return [e for i, doc in enumerate(docs) if (e := label_entry(r, doc, ("labels", i), select, condition)) is not None]


def unbrought(entries: Sequence[LabelEntry], tested: Sequence[tuple[str, Problem]]) -> list[Problem]:
    """A warning for every condition testing a label that no ``labels:`` entry brings (a grant's
    starting labels may still bring it, so this is a warning, not an error)."""
    brought = {label for e in entries for label in e.brings}
    return [dataclasses.replace(where, message=f"no `labels:` entry brings `{label}`, so this condition only sees it when a grant starts sessions with it",
                                hint=did_you_mean(label, sorted(brought)), severity="warning")
            for label, where in tested if label not in brought]
