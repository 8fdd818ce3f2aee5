"""Policy YAML -> model, reporting every problem of every file at once.

Each problem is a ``Problem`` (``file:line:col: message (hint)``).  Errors make a set unusable;
warnings (rules that can never match) do not.  Nothing here compiles or evaluates: ``compile``
takes the model this module returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from mcp_guard.policy._match import glob_covers, normalise_path, split_tool
from mcp_guard.policy.model import (
    ANNOTATION_HINTS,
    OPERATORS,
    PRINCIPAL_KEYS,
    Condition,
    Effect,
    Limit,
    Policy,
    Rule,
    Subjects,
)
from mcp_guard.yamlsrc import Path, Problem, SourceReader, YamlSyntaxError, did_you_mean, load

ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
TOOL = re.compile(r"^[A-Za-z0-9_*?-]{1,32}/[^\s]{1,128}$")
ARG_PATH = re.compile(r"^args(\.[^.\[\]]+(\[\*\])*)+$")

_TOP = ("version", "policies")
_POLICY = ("id", "description", "subjects", "rules", "limits")
_SUBJECTS = ("users", "agents", "purposes")
_RULE = ("id", "effect", "tools", "annotations", "when", "reason")
_LIMIT = ("tools", "per_minute", "per_session")
_EFFECTS = tuple(e.value for e in Effect)


@dataclass
class Parsed:
    """Every policy of every source, plus every problem found on the way."""

    policies: list[Policy] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def lines(self) -> list[str]:
        return [str(p) for p in sorted(self.problems, key=lambda p: (p.file, p.line, p.col))]


def _freeze(value: Any) -> Any:
    """Lists become tuples so a parsed policy is an immutable value."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Reader(SourceReader):
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


def _tools(r: _Reader, data: Any, path: Path, upstreams: Sequence[str] | None) -> tuple[str, ...] | None:
    tools = r.strings(data, path, "`tools`")
    if tools is None:
        return None
    if not tools and isinstance(data, list) and not data:
        r.error(path, "`tools` must name at least one tool", 'for example tools: ["fs/read_file"] or ["time/*"]')
        return None
    for i, name in enumerate(tools):
        if not TOOL.match(name):
            r.error((*path, i), f"tool `{name}` must be written UPSTREAM/TOOL", "globs may use * within a segment, e.g. fs/read_* or */delete*")
            continue
        upstream = split_tool(name)[0]
        if upstreams is not None and "*" not in upstream and "?" not in upstream and upstream not in upstreams:
            r.error((*path, i), f"no upstream named `{upstream}` is configured, so `{name}` can never match",
                    did_you_mean(upstream, upstreams), warning=True)
    return tools


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
        if op == "under" and normalise_path(value) is None:
            r.error(path, f"`under` root `{value}` must be a plain path without `..` above its start or backslashes")
            return False
    elif op == "max_length":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            r.error(path, "`max_length` needs a non-negative integer")
            return False
    elif op in ("min", "max"):
        if not _is_number(value):
            r.error(path, f"`{op}` needs a number", "write it unquoted: min: 1, not min: \"1\"")
            return False
    elif op == "present" and not isinstance(value, bool):
        r.error(path, "`present` needs true or false")
        return False
    return True


def _condition(r: _Reader, key: Any, spec: Any, path: Path) -> Condition | None:
    ok = True
    if not isinstance(key, str) or not (key in PRINCIPAL_KEYS or ARG_PATH.match(key)):
        hint = did_you_mean(str(key), (*PRINCIPAL_KEYS, "args.")) if not str(key).startswith("args") else None
        r.error(path, f"unknown condition key `{key}`", hint or "use args.<name>[.<name>...] ([*] = every element), user, agent, purpose or chain.depth", value=False)
        ok = False
    if not isinstance(spec, dict) or not spec:
        r.error(path, f"condition `{key}` must map operators to values", "for example {under: /srv/data} or {in: [a, b]}")
        return None
    ops: list[tuple[str, Any]] = []
    for op, value in spec.items():
        opath = (*path, op)
        if op not in OPERATORS:
            r.error(opath, f"unknown operator `{op}`", did_you_mean(str(op), OPERATORS) or f"operators: {', '.join(OPERATORS)}", value=False)
            ok = False
        elif _operand(r, op, value, opath):
            ops.append((op, _freeze(value)))
        else:
            ok = False
    if not ok:
        return None
    cond = Condition(str(key), tuple(ops))
    _lint_condition(r, cond, path)
    return cond


def _lint_condition(r: _Reader, cond: Condition, path: Path) -> None:
    """Warn about conditions that can never hold (they make their rule dead)."""
    ops = dict(cond.ops)
    dead = None
    if ops.get("in") == ():
        dead = "`in: []` never holds"
    elif _is_number(ops.get("min")) and _is_number(ops.get("max")) and ops["min"] > ops["max"]:
        dead = "`min` is greater than `max`"
    elif ops.get("present") is False and len(ops) > 1:
        dead = "`present: false` with another operator never holds"
    elif cond.key in PRINCIPAL_KEYS and ops.get("present") is False and cond.key != "purpose":
        dead = f"`{cond.key}` is always present"
    if dead:
        r.error(path, f"condition on `{cond.key}` can never hold: {dead}, so this rule never matches", warning=True, value=False)


def _rule(r: _Reader, data: Any, path: Path, upstreams: Sequence[str] | None) -> Rule | None:
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
    tools: tuple[str, ...] | None = None
    if "tools" not in m:
        r.error(path, "rule needs `tools`", 'for example tools: ["fs/read_file"]', value=False)
        ok = False
    else:
        tools = _tools(r, m["tools"], (*path, "tools"), upstreams)
        ok = ok and tools is not None
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
    reason = r.text(m.get("reason"), (*path, "reason"), "`reason`")
    rid = m.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID.match(rid)):
        r.error((*path, "id"), f"rule id `{rid}` must be letters, digits and _.:@- (at most 128)")
        ok = False
    if not ok or effect is None or tools is None or ("reason" in m and reason is None):
        return None
    return Rule(effect, tools, tuple(when), tuple(annotations), reason, rid)


def _limit(r: _Reader, data: Any, path: Path, upstreams: Sequence[str] | None) -> Limit | None:
    m = r.mapping(data, path, _LIMIT, "a limit")
    if m is None:
        return None
    tools = _tools(r, m.get("tools"), (*path, "tools"), upstreams) if "tools" in m else None
    if "tools" not in m:
        r.error(path, "limit needs `tools`", value=False)
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
    if tools is None or len(counts) != sum(k in m for k in ("per_minute", "per_session")):
        return None
    return Limit(tools, counts.get("per_minute"), counts.get("per_session"))


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


def _lint_shadowed(r: _Reader, rules: list[tuple[int, Rule]], path: Path) -> None:
    """Warn about allow/approve rules every tool of which an unconditional deny already covers."""
    blanket = [(i, rule) for i, rule in rules if rule.effect is Effect.DENY and not rule.when and not rule.annotations]
    for i, rule in rules:
        if rule.effect is Effect.DENY:
            continue
        for j, deny in blanket:
            if all(any(glob_covers(w, t) for w in deny.tools) for t in rule.tools):
                r.error((*path, "rules", i), f"this {rule.effect} rule can never apply: rule {deny.id or j + 1} of the same policy denies all its tools unconditionally",
                        warning=True, value=False)
                break


def _policy(r: _Reader, data: Any, path: Path, upstreams: Sequence[str] | None) -> Policy | None:
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
            rule = _rule(r, raw, (*path, "rules", i), upstreams)
            if rule is None:
                ok = False
                continue
            if rule.id is not None:
                if rule.id in seen:
                    r.error((*path, "rules", i, "id"), f"duplicate rule id `{rule.id}` in policy `{pid}`")
                    ok = False
                seen.add(rule.id)
            rules.append((i, rule))
        _lint_shadowed(r, rules, path)
    limits: list[Limit] = []
    raw_limits = m.get("limits", [])
    if not isinstance(raw_limits, list):
        r.error((*path, "limits"), "`limits` must be a list")
        ok = False
    else:
        for i, raw in enumerate(raw_limits):
            lim = _limit(r, raw, (*path, "limits", i), upstreams)
            ok = ok and lim is not None
            if lim is not None:
                limits.append(lim)
    if not ok or subjects is None or ("description" in m and description is None) or not isinstance(pid, str):
        return None
    return Policy(pid, tuple(rule for _, rule in rules), description, subjects, tuple(limits), source=r.where(path))


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
        r = _Reader(smap, out.problems)
        if data is None:
            r.error((), "policy file is empty", "start with `version: 1` and `policies:`", warning=True)
            continue
        top = r.mapping(data, (), _TOP, "a policy file")
        if top is None:
            continue
        if top.get("version") != 1:
            r.error(("version",) if "version" in top else (), "`version` must be 1", "start the file with `version: 1`", value="version" in top)
        raw = top.get("policies")
        if not isinstance(raw, list):
            r.error(("policies",) if "policies" in top else (), "a policy file needs a list of `policies`", value="policies" in top)
            continue
        for i, item in enumerate(raw):
            pol = _policy(r, item, ("policies", i), upstreams)
            pid = item.get("id") if isinstance(item, dict) else None
            if isinstance(pid, str):
                here = r.where(("policies", i, "id"))
                if pid in first_seen:
                    r.error(("policies", i, "id"), f"duplicate policy id `{pid}`", f"first defined at {first_seen[pid]}")
                    continue
                first_seen[pid] = here
            if pol is not None:
                out.policies.append(pol)
    return out


def parse_text(text: str, file: str = "<policy>") -> Parsed:
    return parse_sources([(file, text)])


# --------------------------------------------------------------------------- dump


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def policy_to_data(policy: Policy) -> dict[str, Any]:
    out: dict[str, Any] = {"id": policy.id}
    if policy.description is not None:
        out["description"] = policy.description
    subjects = {k: list(v) for k, v in (("users", policy.subjects.users), ("agents", policy.subjects.agents), ("purposes", policy.subjects.purposes)) if v is not None}
    if subjects:
        out["subjects"] = subjects
    rules = []
    for rule in policy.rules:
        rd: dict[str, Any] = {}
        if rule.id is not None:
            rd["id"] = rule.id
        rd["effect"] = rule.effect.value
        rd["tools"] = list(rule.tools)
        if rule.annotations:
            rd["annotations"] = dict(rule.annotations)
        if rule.when:
            rd["when"] = {c.key: {op: _thaw(v) for op, v in c.ops} for c in rule.when}
        if rule.reason is not None:
            rd["reason"] = rule.reason
        rules.append(rd)
    out["rules"] = rules
    if policy.limits:
        out["limits"] = [
            {"tools": list(lim.tools), **{k: v for k, v in (("per_minute", lim.per_minute), ("per_session", lim.per_session)) if v is not None}}
            for lim in policy.limits
        ]
    return out


def dump(policies: Iterable[Policy]) -> str:
    """The YAML text of ``policies``; ``parse_text(dump(ps)).policies == list(ps)``."""
    doc = {"version": 1, "policies": [policy_to_data(p) for p in policies]}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
