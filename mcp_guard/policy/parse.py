"""Policy YAML -> model, reporting every problem of every file at once.

Each file is validated by its document model (``document.PolicyFileDoc``; ``messages`` words the
errors); this module turns the validated document into the engine's values and checks what spans
keys or files (unique ids, a condition its selectors cannot supply, rules that can never match).
Where a part of a file is invalid, the valid parts around it are still checked, so one pass shows
every mistake.  Each problem is a ``Problem`` (``file:line:col: message (hint)``).  Errors make a
set unusable; warnings (rules that can never match) do not.  Nothing here evaluates: ``compile``
takes the model this module returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp_guard.policy._match import split_tool
from mcp_guard.policy.document import (
    ConditionDoc,
    LabelEntryDoc,
    LimitDoc,
    PolicyDoc,
    PolicyFileDoc,
    RuleDoc,
    SubjectsDoc,
)
from mcp_guard.policy.messages import validated
from mcp_guard.policy.model import (
    LABEL_OPERATORS,
    SELECTORS,
    SESSION_LABELS,
    URI_KEY,
    URI_OPERATORS,
    Condition,
    Effect,
    LabelEntry,
    Limit,
    Policy,
    Rule,
    Subjects,
)
from mcp_guard.policy.parse_flow import label_entries, unbrought
from mcp_guard.policy.parse_lint import check_keys, lint_condition, lint_shadowed
from mcp_guard.yamlsrc import Path, Problem, SourceMap, SourceReader, YamlSyntaxError, did_you_mean, load


@dataclass
class Parsed:
    """Every policy of every source, plus every problem found on the way."""

    policies: list[Policy] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # every selector that names a literal upstream: (upstream, selector, where), checked by ``against``
    upstream_refs: list[tuple[str, str, Problem]] = field(default_factory=list)
    labels: list[LabelEntry] = field(default_factory=list)  # the top-level `labels:` entries of every file
    label_refs: list[tuple[str, Problem]] = field(default_factory=list)  # every label a condition tests, and where

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def lines(self) -> list[str]:
        return [str(p) for p in sorted(self.problems, key=lambda p: (p.file, p.line, p.col))]

    def against(self, upstreams: Sequence[str]) -> Parsed:
        """These policies checked against the configured upstream names: a selector naming no
        configured upstream is a warning (it can never match).  Parse once, check as often as the
        names change (the inline form learns its upstream's name from the policies themselves)."""
        found = [dataclasses.replace(where, message=f"no upstream named `{upstream}` is configured, so `{name}` can never match",
                                     hint=did_you_mean(upstream, upstreams), severity="warning")
                 for upstream, name, where in self.upstream_refs if upstream not in upstreams]
        problems = sorted([*self.problems, *found], key=lambda p: (p.file, p.line, p.col)) if found else self.problems
        return Parsed(self.policies, problems, self.upstream_refs, self.labels, self.label_refs)

    def tool_upstreams(self) -> set[str]:
        """The literal upstream names the tool selectors of rules and limits use."""
        names: set[str] = set()
        for pol in self.policies:
            for pattern in [t for r in pol.rules for t in r.tools] + [t for lim in pol.limits for t in lim.tools or ()]:
                upstream = split_tool(pattern)[0]
                if upstream and "*" not in upstream and "?" not in upstream:
                    names.add(upstream)
        return names


def _freeze(value: Any) -> Any:
    """Lists become tuples so a parsed policy is an immutable value."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


class _Reader(SourceReader):
    def __init__(self, smap: SourceMap, out: Parsed) -> None:
        super().__init__(smap, out.problems)
        self.upstream_refs = out.upstream_refs
        self.label_refs = out.label_refs

    def where(self, path: Path) -> str:
        line, _col = self.smap.at(path)
        return f"{self.smap.file}:{line}"


def _select(r: _Reader, doc: RuleDoc | LimitDoc | LabelEntryDoc, path: Path, what: str) -> dict[str, tuple[str, ...]] | None:
    """The selectors of a rule, limit or labels entry (at least one of tools, resources, prompts);
    None when one is missing or invalid (the model said which)."""
    present = [k for k in SELECTORS if k in doc.model_fields_set]
    if not present:
        r.error(path, f"{what} needs `tools`, `resources` or `prompts`", 'for example tools: ["fs/read_file"]', value=False)
        return None
    out = {k: tuple(v) for k in present if (v := getattr(doc, k)) is not None}
    for key, names in out.items():
        for i, name in enumerate(names):
            upstream = split_tool(name)[0]
            if "*" not in upstream and "?" not in upstream:
                r.upstream_refs.append((upstream, name, r.problem((*path, key, i), "", warning=True)))
    return out if len(out) == len(present) else None


def _condition(r: _Reader, key: str, doc: ConditionDoc, path: Path) -> Condition | None:
    """One validated condition, checked for what spans its key and its operators."""
    ok = doc.valid
    written = doc.written if ok else {f.alias or name: getattr(doc, name) for name, f in ConditionDoc.model_fields.items()
                                      if name in doc.model_fields_set}
    if ok and not written:
        r.error(path, f"condition `{key}` must map operators to values", "for example {under: /srv/data} or {in: [a, b]}")
        return None
    ops: list[tuple[str, Any]] = []
    for op, value in written.items():
        opath = (*path, op)
        if key == SESSION_LABELS or op in LABEL_OPERATORS:
            if key != SESSION_LABELS or op not in LABEL_OPERATORS:
                r.error(opath, f"`{op}` does not apply to `{key}`", "session.labels takes any_of, all_of and none_of", value=False)
                ok = False
        elif op == "carries" and not key.startswith("args."):
            r.error(opath, "`carries` applies to arguments (args.<name>)", value=False)
            ok = False
        elif key == URI_KEY and op not in URI_OPERATORS:
            r.error(opath, f"operator `{op}` does not apply to `uri`", f"uri takes {', '.join(URI_OPERATORS)}", value=False)
            ok = False
        ops.append((op, _freeze(value)))
    if not ok:
        return None
    cond = Condition(key, tuple(ops))
    lint_condition(r, cond, path)
    if cond.is_flow:
        r.label_refs.extend((label, r.problem(path, "", warning=True, value=False)) for label in cond.labels)
    return cond


def _rule(r: _Reader, doc: RuleDoc | None, path: Path) -> Rule | None:
    if doc is None:
        return None
    ok = doc.valid
    selected = _select(r, doc, path, "rule")
    when: list[Condition] = []
    for key, spec in (doc.when or {}).items():
        cond = _condition(r, key, spec, (*path, "when", key)) if spec is not None else None
        ok = ok and cond is not None
        if cond is not None:
            when.append(cond)
    annotations = tuple((k, v) for k, v in doc.annotations.model_dump(exclude_unset=True).items()) if doc.annotations else ()
    if selected is not None:
        ok = check_keys(r, selected, when, path) and ok
        if "annotations" in doc.model_fields_set and "tools" not in selected:
            r.error((*path, "annotations"), "`annotations` select tools by their annotations; this rule selects no tools",
                    "remove it, or add tools: [...]", value=False)
            ok = False
    if not ok or selected is None:
        return None
    return Rule(Effect(doc.effect), selected.get("tools", ()), tuple(when), annotations, doc.reason, doc.id,
                selected.get("resources", ()), selected.get("prompts", ()))


def _limit(r: _Reader, doc: LimitDoc | None, path: Path) -> Limit | None:
    if doc is None:
        return None
    selected = _select(r, doc, path, "limit")
    if not doc.model_fields_set & {"per_minute", "per_session"}:
        r.error(path, "limit needs `per_minute` or `per_session`", value=False)
        return None
    if not doc.valid or selected is None:
        return None
    return Limit(selected.get("tools", ()), doc.per_minute, doc.per_session, selected.get("resources", ()), selected.get("prompts", ()))


def _subjects(r: _Reader, doc: SubjectsDoc | None, path: Path) -> Subjects:
    if doc is None:
        return Subjects()
    for key in doc.model_fields_set:
        if getattr(doc, key) == []:
            r.error((*path, key), f"`subjects.{key}` is empty, so this policy applies to nobody", "remove the key to match everyone", warning=True)
    return Subjects(*(None if (v := getattr(doc, k)) is None else tuple(v) for k in ("users", "agents", "purposes")))


def _policy(r: _Reader, doc: PolicyDoc | None, path: Path) -> Policy | None:
    if doc is None:
        return None
    ok = doc.valid
    subjects = _subjects(r, doc.subjects, (*path, "subjects"))
    if doc.rules == []:
        r.error((*path, "rules"), "policy has no rules, so it never decides anything", warning=True)
    rules: list[tuple[int, Rule]] = []
    seen: set[str] = set()
    for i, rdoc in enumerate(doc.rules or ()):
        rule = _rule(r, rdoc, (*path, "rules", i))
        if rule is None:
            ok = False
            continue
        if rule.id is not None:
            if rule.id in seen:
                r.error((*path, "rules", i, "id"), f"duplicate rule id `{rule.id}` in policy `{doc.id}`")
                ok = False
            seen.add(rule.id)
        rules.append((i, rule))
    lint_shadowed(r, rules, path)
    limits: list[Limit] = []
    for i, ldoc in enumerate(doc.limits or ()):
        lim = _limit(r, ldoc, (*path, "limits", i))
        ok = ok and lim is not None
        if lim is not None:
            limits.append(lim)
    if not ok:
        return None
    return Policy(doc.id, tuple(rule for _, rule in rules), doc.description, subjects, tuple(limits), source=r.where(path), mode=doc.mode)


def parse_sources(sources: Iterable[tuple[str, str]], *, upstreams: Sequence[str] | None = None) -> Parsed:
    """Parse ``(file name, text)`` pairs into one merged list; ids must be unique across files.

    ``upstreams`` (the configured upstream names, when known) turns tool patterns that name
    no configured upstream into warnings.
    """
    out = Parsed()
    first_seen: dict[str, str] = {}
    for file, text in sources:
        try:
            data, smap = load(text, file)
        except YamlSyntaxError as exc:
            out.problems.append(exc.problem)
            continue
        r = _Reader(smap, out)
        if data is None:
            r.error((), "policy file is empty", "start with `version: 1` and `policies:`", warning=True)
            continue
        doc = validated(PolicyFileDoc, data, r)
        if doc is None:
            continue
        if not doc.model_fields_set & {"policies", "labels"}:
            r.error((), "a policy file needs a list of `policies`", value=False)
        out.labels.extend(label_entries(r, doc.labels or [], _select, _condition))  # type: ignore[arg-type]
        for i, pdoc in enumerate(doc.policies or ()):
            pol = _policy(r, pdoc, ("policies", i))
            pid = pdoc.id if pdoc is not None else None
            if isinstance(pid, str):
                here = r.where(("policies", i, "id"))
                if pid in first_seen:
                    r.error(("policies", i, "id"), f"duplicate policy id `{pid}`", f"first defined at {first_seen[pid]}")
                    continue
                first_seen[pid] = here
            if pol is not None:
                out.policies.append(pol)
    out.problems.extend(unbrought(out.labels, out.label_refs))
    for entry in out.labels:
        out.upstream_refs.extend((u, f"upstream {u}", Problem(entry.source.rsplit(":", 1)[0], int(entry.source.rsplit(":", 1)[1]), 1, "", None, "warning"))
                                 for u in entry.upstreams)
    return out if upstreams is None else out.against(upstreams)


def parse_text(text: str, file: str = "<policy>") -> Parsed:
    return parse_sources([(file, text)])
