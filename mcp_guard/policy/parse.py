"""Policy YAML -> model, reporting every problem of every file at once.

Each problem is a ``Problem`` (``file:line:col: message (hint)``).  Errors make a set unusable;
warnings (rules that can never match) do not.  Nothing here compiles or evaluates: ``compile``
takes the model this module returns.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp_guard.paths import Under
from mcp_guard.policy._match import split_tool
from mcp_guard.policy.document import (
    ARG_PATH,
    ID,
    RESOURCE,
    TOOL,
    LimitDoc,
    PolicyDoc,
    PolicyFileDoc,
    RuleDoc,
    SubjectsDoc,
    keys,
)
from mcp_guard.policy.model import (
    ANNOTATION_HINTS,
    LABEL_OPERATORS,
    MODES,
    OPERATORS,
    PRINCIPAL_KEYS,
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
from mcp_guard.policy.parse_flow import flow_operand, label_entries, unbrought
from mcp_guard.policy.parse_lint import check_keys, is_number, lint_condition, lint_shadowed
from mcp_guard.yamlsrc import Path, Problem, SourceMap, SourceReader, YamlSyntaxError, did_you_mean, load

_TOP = keys(PolicyFileDoc)
_POLICY = keys(PolicyDoc)
_SUBJECTS = keys(SubjectsDoc)
_RULE = keys(RuleDoc)
_LIMIT = keys(LimitDoc)
_EXAMPLE = {"tools": '["fs/read_file"] or ["time/*"]', "resources": '["docs/*"] or ["fs/file:///srv/*"]', "prompts": '["git/*"]'}
_EFFECTS = tuple(e.value for e in Effect)


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

    def mapping(self, data: Any, path: Path, allowed: Sequence[str], what: str) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            self.error(path, f"{what} must be a mapping")
            return None
        self.unknown_keys(data, path, allowed, what, list_all=True)
        return data

    def text(self, data: Any, path: Path, what: str) -> str | None:
        if data is None:
            return None
        if not isinstance(data, str) or not data.strip():
            self.error(path, f"{what} must be a non-empty string")
            return None
        return data

    def strings(self, data: Any, path: Path, what: str) -> tuple[str, ...] | None:
        if not isinstance(data, list):
            self.error(path, f"{what} must be a list of strings", f'write {path[-1]}: ["..."]' if isinstance(data, str) else None)
            return None
        out: list[str] = []
        for i, item in enumerate(data):
            if not isinstance(item, str) or not item:
                self.error((*path, i), f"{what} entries must be non-empty strings")
            else:
                out.append(item)
        return tuple(out)


def _selectors(r: _Reader, key: str, data: Any, path: Path) -> tuple[str, ...] | None:
    """One selector list (``tools``, ``resources`` or ``prompts``) of a rule or a limit."""
    names = r.strings(data, path, f"`{key}`")
    if names is None:
        return None
    if not names and isinstance(data, list) and not data:
        r.error(path, f"`{key}` must name at least one {key[:-1]}", f"for example {key}: {_EXAMPLE[key]}")
        return None
    shape = RESOURCE if key == "resources" else TOOL
    for i, name in enumerate(names):
        if not shape.match(name):
            if key == "resources":
                r.error((*path, i), f"resource `{name}` must be written UPSTREAM/URI_GLOB",
                        "the upstream part is a glob within a segment, the URI part a glob where * crosses /, e.g. docs/* or fs/file:///srv/*")
            else:
                r.error((*path, i), f"{key[:-1]} `{name}` must be written UPSTREAM/{key[:-1].upper()}",
                        "globs may use * within a segment, e.g. fs/read_* or */delete*")
            continue
        upstream = split_tool(name)[0]
        if "*" not in upstream and "?" not in upstream:
            r.upstream_refs.append((upstream, name, r.problem((*path, i), "", warning=True)))
    return names


def _select(r: _Reader, m: dict[str, Any], path: Path, what: str) -> dict[str, tuple[str, ...]] | None:
    """The selectors of a rule or limit: at least one of tools, resources, prompts."""
    present = [k for k in SELECTORS if k in m]
    if not present:
        r.error(path, f"{what} needs `tools`, `resources` or `prompts`", 'for example tools: ["fs/read_file"]', value=False)
        return None
    out: dict[str, tuple[str, ...]] = {}
    ok = True
    for key in present:
        got = _selectors(r, key, m[key], (*path, key))
        if got is None:
            ok = False
        else:
            out[key] = got
    return out if ok else None


def _operand(r: _Reader, op: str, value: Any, path: Path) -> bool:
    """Check one operator's operand; True if usable."""
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            r.error(path, f"`{op}` needs a list of values", f"{op}: [a, b]")
            return False
    elif op in ("glob", "regex", "under"):
        if not isinstance(value, str) or not value:
            r.error(path, f"`{op}` needs a non-empty string")
            return False
        if op == "regex":
            try:
                re.compile(value)
            except re.error as exc:
                r.error(path, f"invalid regex `{value}`: {exc}")
                return False
        if op == "under" and not Under(value).usable:
            r.error(path, f"`under` root `{value}` must be a plain path (or a file:// URI) without `..` above its start, `~` or backslashes")
            return False
    elif op == "max_length":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            r.error(path, "`max_length` needs a non-negative integer")
            return False
    elif op in ("min", "max"):
        if not is_number(value):
            r.error(path, f"`{op}` needs a number", "write it unquoted: min: 1, not min: \"1\"")
            return False
    elif op == "present" and not isinstance(value, bool):
        r.error(path, "`present` needs true or false")
        return False
    return True


def _condition(r: _Reader, key: Any, spec: Any, path: Path) -> Condition | None:
    ok = True
    if not isinstance(key, str) or not (key in PRINCIPAL_KEYS or key in (URI_KEY, SESSION_LABELS) or ARG_PATH.match(key)):
        hint = did_you_mean(str(key), (*PRINCIPAL_KEYS, URI_KEY, SESSION_LABELS, "args.")) if not str(key).startswith("args") else None
        r.error(path, f"unknown condition key `{key}`",
                hint or "use args.<name>[.<name>...] ([*] = every element), uri, user, agent, purpose, chain.depth or session.labels", value=False)
        ok = False
    if not isinstance(spec, dict) or not spec:
        r.error(path, f"condition `{key}` must map operators to values", "for example {under: /srv/data} or {in: [a, b]}")
        return None
    ops: list[tuple[str, Any]] = []
    for op, value in spec.items():
        opath = (*path, op)
        if key == SESSION_LABELS or op in LABEL_OPERATORS:
            if key != SESSION_LABELS or op not in LABEL_OPERATORS:
                r.error(opath, f"`{op}` does not apply to `{key}`", "session.labels takes any_of, all_of and none_of", value=False)
                ok = False
            elif flow_operand(r, op, value, opath):
                ops.append((op, _freeze(value)))
            else:
                ok = False
        elif op == "carries":
            if not str(key).startswith("args."):
                r.error(opath, "`carries` applies to arguments (args.<name>)", value=False)
                ok = False
            elif flow_operand(r, op, value, opath):
                ops.append((op, _freeze(value)))
            else:
                ok = False
        elif op not in OPERATORS:
            r.error(opath, f"unknown operator `{op}`", did_you_mean(str(op), OPERATORS) or f"operators: {', '.join(OPERATORS)}", value=False)
            ok = False
        elif key == URI_KEY and op not in URI_OPERATORS:
            r.error(opath, f"operator `{op}` does not apply to `uri`", f"uri takes {', '.join(URI_OPERATORS)}", value=False)
            ok = False
        elif _operand(r, op, value, opath):
            ops.append((op, _freeze(value)))
        else:
            ok = False
    if not ok:
        return None
    cond = Condition(str(key), tuple(ops))
    lint_condition(r, cond, path)
    if cond.is_flow:
        r.label_refs.extend((label, r.problem(path, "", warning=True, value=False)) for label in cond.labels)
    return cond


def _rule(r: _Reader, data: Any, path: Path) -> Rule | None:
    m = r.mapping(data, path, _RULE, "a rule")
    if m is None:
        return None
    ok = True
    effect: Effect | None = None
    if "effect" not in m:
        r.error(path, "rule needs an `effect`", "allow, approve or deny", value=False)
        ok = False
    elif not isinstance(m["effect"], str) or m["effect"] not in _EFFECTS:
        r.error((*path, "effect"), f"unknown effect `{m['effect']}`", did_you_mean(str(m["effect"]), _EFFECTS) or "allow, approve or deny")
        ok = False
    else:
        effect = Effect(m["effect"])
    selected = _select(r, m, path, "rule")
    ok = ok and selected is not None
    annotations: list[tuple[str, bool]] = []
    if "annotations" in m:
        ann = r.mapping(m["annotations"], (*path, "annotations"), ANNOTATION_HINTS, "annotations")
        ok = ok and ann is not None
        for k, v in (ann or {}).items():
            if k in ANNOTATION_HINTS:
                if isinstance(v, bool):
                    annotations.append((k, v))
                else:
                    r.error((*path, "annotations", k), f"annotation `{k}` must be true or false")
                    ok = False
            else:
                ok = False
    when: list[Condition] = []
    if "when" in m:
        w = r.mapping(m["when"], (*path, "when"), (), "when") if not isinstance(m["when"], dict) else m["when"]
        for key, spec in (w or {}).items():
            cond = _condition(r, key, spec, (*path, "when", key))
            ok = ok and cond is not None
            if cond is not None:
                when.append(cond)
        ok = ok and w is not None
    if selected is not None:
        ok = check_keys(r, selected, when, path) and ok
        if annotations and "tools" not in selected:
            r.error((*path, "annotations"), "`annotations` select tools by their annotations; this rule selects no tools",
                    "remove it, or add tools: [...]", value=False)
            ok = False
    reason = r.text(m.get("reason"), (*path, "reason"), "`reason`")
    rid = m.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID.match(rid)):
        r.error((*path, "id"), f"rule id `{rid}` must be letters, digits and _.:@- (at most 128)")
        ok = False
    if not ok or effect is None or selected is None or ("reason" in m and reason is None):
        return None
    return Rule(effect, selected.get("tools", ()), tuple(when), tuple(annotations), reason, rid,
                selected.get("resources", ()), selected.get("prompts", ()))


def _limit(r: _Reader, data: Any, path: Path) -> Limit | None:
    m = r.mapping(data, path, _LIMIT, "a limit")
    if m is None:
        return None
    selected = _select(r, m, path, "limit")
    counts: dict[str, int] = {}
    for key in ("per_minute", "per_session"):
        v = m.get(key)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            r.error((*path, key), f"`{key}` must be a positive integer")
        else:
            counts[key] = v
    if not counts and "per_minute" not in m and "per_session" not in m:
        r.error(path, "limit needs `per_minute` or `per_session`", value=False)
        return None
    if selected is None or len(counts) != sum(k in m for k in ("per_minute", "per_session")):
        return None
    return Limit(selected.get("tools", ()), counts.get("per_minute"), counts.get("per_session"),
                 selected.get("resources", ()), selected.get("prompts", ()))


def _subjects(r: _Reader, data: Any, path: Path) -> Subjects | None:
    if data is None:
        return Subjects()
    m = r.mapping(data, path, _SUBJECTS, "subjects")
    if m is None:
        return None
    got: dict[str, tuple[str, ...]] = {}
    ok = True
    for key in _SUBJECTS:
        if key in m:
            values = r.strings(m[key], (*path, key), f"`subjects.{key}`")
            if values is None:
                ok = False
            else:
                got[key] = values
                if not values:
                    r.error((*path, key), f"`subjects.{key}` is empty, so this policy applies to nobody", "remove the key to match everyone", warning=True)
    return Subjects(got.get("users"), got.get("agents"), got.get("purposes")) if ok and len(m.keys() - set(_SUBJECTS)) == 0 else None


def _policy(r: _Reader, data: Any, path: Path) -> Policy | None:
    m = r.mapping(data, path, _POLICY, "a policy")
    if m is None:
        return None
    ok = True
    pid = m.get("id")
    if pid is None:
        r.error(path, "policy needs an `id`", value=False)
        ok = False
    elif not isinstance(pid, str) or not ID.match(pid):
        r.error((*path, "id"), f"policy id `{pid}` must be letters, digits and _.:@- (at most 128)")
        ok = False
    description = r.text(m.get("description"), (*path, "description"), "`description`")
    mode = m.get("mode", "enforce")
    if mode not in MODES:
        r.error((*path, "mode"), f"unknown mode `{mode}`", "enforce (the default) or shadow (decided and audited, never enforced)")
        ok = False
    subjects = _subjects(r, m.get("subjects"), (*path, "subjects"))
    rules: list[tuple[int, Rule]] = []
    raw_rules = m.get("rules")
    if not isinstance(raw_rules, list):
        r.error((*path, "rules") if "rules" in m else path, "policy needs a list of `rules`", value="rules" in m)
        ok = False
    else:
        if not raw_rules:
            r.error((*path, "rules"), "policy has no rules, so it never decides anything", warning=True)
        seen: set[str] = set()
        for i, raw in enumerate(raw_rules):
            rule = _rule(r, raw, (*path, "rules", i))
            if rule is None:
                ok = False
                continue
            if rule.id is not None:
                if rule.id in seen:
                    r.error((*path, "rules", i, "id"), f"duplicate rule id `{rule.id}` in policy `{pid}`")
                    ok = False
                seen.add(rule.id)
            rules.append((i, rule))
        lint_shadowed(r, rules, path)
    limits: list[Limit] = []
    raw_limits = m.get("limits", [])
    if not isinstance(raw_limits, list):
        r.error((*path, "limits"), "`limits` must be a list")
        ok = False
    else:
        for i, raw in enumerate(raw_limits):
            lim = _limit(r, raw, (*path, "limits", i))
            ok = ok and lim is not None
            if lim is not None:
                limits.append(lim)
    if not ok or subjects is None or ("description" in m and description is None) or not isinstance(pid, str):
        return None
    return Policy(pid, tuple(rule for _, rule in rules), description, subjects, tuple(limits), source=r.where(path), mode=str(mode))


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
        top = r.mapping(data, (), _TOP, "a policy file")
        if top is None:
            continue
        if top.get("version") != 1:
            r.error(("version",) if "version" in top else (), "`version` must be 1", "start the file with `version: 1`", value="version" in top)
        if "labels" in top:
            out.labels.extend(label_entries(r, top["labels"], _select, _condition))  # type: ignore[arg-type]
            if "policies" not in top:
                continue
        raw = top.get("policies")
        if not isinstance(raw, list):
            r.error(("policies",) if "policies" in top else (), "a policy file needs a list of `policies`", value="policies" in top)
            continue
        for i, item in enumerate(raw):
            pol = _policy(r, item, ("policies", i))
            pid = item.get("id") if isinstance(item, dict) else None
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
