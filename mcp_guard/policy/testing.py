"""Policy test cases (docs/policies.md): ``*.test.yaml`` files of principal + call + expected effect.

Pure: the caller reads the files and picks the policy set each file runs against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mcp_guard.flow.index import ContentIndex
from mcp_guard.flow.parts import content_of
from mcp_guard.flow.view import SessionView
from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext
from mcp_guard.policy.document import (
    LABEL,
    UPSTREAM,
    CallDoc,
    CaseDoc,
    HistoryDoc,
    PrincipalDoc,
    SessionDoc,
    TestFileDoc,
    keys,
)
from mcp_guard.policy.engine import PolicySet
from mcp_guard.policy.model import Effect
from mcp_guard.yamlsrc import Path, Problem, SourceMap, YamlSyntaxError, did_you_mean, load

_TOP = keys(TestFileDoc)
_CASE = keys(CaseDoc)
_HISTORY = keys(HistoryDoc)
_PRINCIPAL = keys(PrincipalDoc)
_CALL = keys(CallDoc)
_SESSION = keys(SessionDoc)
_EXPECT = tuple(e.value for e in Effect)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    where: str  # "file:line"
    principal: Principal
    tool: str
    args: dict[str, Any]
    annotations: dict[str, Any] | None
    expect: Effect
    visible: bool | None = None
    decided_by: tuple[str, ...] = ()
    kind: Kind = Kind.TOOL
    workdir: str | None = None  # the upstream's declared working directory, for relative paths
    session_labels: tuple[str, ...] = ()  # `session: {labels: [...]}`: labels held before the call
    history: tuple[tuple[str, dict[str, Any], Any], ...] = ()  # earlier forwarded calls: (tool, args, result)


@dataclass
class TestFile:
    file: str
    cases: list[Case] = field(default_factory=list)
    policies: tuple[str, ...] = ()  # paths relative to the test file, as written
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    passed: bool
    detail: str  # what was decided, one sentence


def parse_test_file(text: str, file: str) -> TestFile:
    out = TestFile(file)
    try:
        data, smap = load(text, file)
    except YamlSyntaxError as exc:
        out.problems.append(exc.problem)
        return out

    def err(path: Path, message: str, hint: str | None = None) -> None:
        at = (*path, "__value__") if (*path, "__value__") in smap.positions else path
        out.problems.append(smap.problem(at, message, hint))

    def mapping(value: Any, path: Path, allowed: tuple[str, ...], what: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            err(path, f"{what} must be a mapping")
            return None
        bad = [k for k in value if k not in allowed]
        for k in bad:
            out.problems.append(smap.problem((*path, k), f"unknown key `{k}` in {what}", did_you_mean(str(k), allowed)))
        return None if bad else value

    top = mapping(data, (), _TOP, "a policy test file")
    if top is None:
        return out
    pol = top.get("policies")
    if pol is not None:
        if isinstance(pol, str):
            pol = [pol]
        if not isinstance(pol, list) or not all(isinstance(p, str) for p in pol):
            err(("policies",), "`policies` must be a path or a list of paths")
        else:
            out.policies = tuple(pol)
    cases = top.get("cases")
    if not isinstance(cases, list) or not cases:
        err(("cases",) if "cases" in top else (), "a policy test file needs a non-empty list of `cases`")
        return out
    for i, raw in enumerate(cases):
        case = _case(raw, ("cases", i), mapping, err, smap)
        if case is not None:
            out.cases.append(case)
    return out


def _case(raw: Any, path: Path, mapping: Any, err: Any, smap: SourceMap) -> Case | None:
    m = mapping(raw, path, _CASE, "a test case")
    if m is None:
        return None
    ok = True
    name = m.get("name")
    if not isinstance(name, str) or not name:
        err((*path, "name") if "name" in m else path, "test case needs a `name`")
        ok = False
    pr = mapping(m.get("principal"), (*path, "principal"), _PRINCIPAL, "principal")
    principal = None
    if pr is not None:
        user = pr.get("user")
        agents = pr.get("agents", [pr["agent"]] if "agent" in pr else [])
        purpose = pr.get("purpose")
        if not isinstance(user, str):
            err((*path, "principal"), "principal needs a `user` string")
        elif not isinstance(agents, list) or not all(isinstance(a, str) for a in agents) or ("agent" in pr and "agents" in pr):
            err((*path, "principal"), "principal takes `agent` (a string) or `agents` (a list, origin side first)")
        elif purpose is not None and not isinstance(purpose, str):
            err((*path, "principal", "purpose"), "`purpose` must be a string")
        else:
            principal = Principal(user=user, agents=tuple(agents), purpose=purpose)
    call = mapping(m.get("call"), (*path, "call"), _CALL, "call")
    tool, args, annotations, kind, workdir = None, {}, None, Kind.TOOL, None
    if call is not None:
        tool, kind = _call_target(call, (*path, "call"), err)
        args = call.get("args", {})
        annotations = call.get("annotations")
        workdir = call.get("workdir")
        if not isinstance(args, dict):
            err((*path, "call", "args"), "`call.args` must be a mapping")
            ok = False
        if annotations is not None and not isinstance(annotations, dict):
            err((*path, "call", "annotations"), "`call.annotations` must be a mapping")
            ok = False
        if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")):
            err((*path, "call", "workdir"), "`call.workdir` must be an absolute path")
            ok = False
    expect = m.get("expect")
    if expect not in _EXPECT:
        err((*path, "expect") if "expect" in m else path, f"`expect` must be allow, deny or approve, not `{expect}`",
            did_you_mean(str(expect), _EXPECT))
        ok = False
    visible = m.get("visible")
    if visible is not None and not isinstance(visible, bool):
        err((*path, "visible"), "`visible` must be true or false")
        ok = False
    decided = m.get("decided_by", [])
    if isinstance(decided, str):
        decided = [decided]
    if not isinstance(decided, list) or not all(isinstance(d, str) for d in decided):
        err((*path, "decided_by"), "`decided_by` must be a policy id or a list of them")
        ok = False
    labels: tuple[str, ...] = ()
    if "session" in m:
        sess = mapping(m["session"], (*path, "session"), _SESSION, "session")
        raw_labels = sess.get("labels") if sess is not None else None
        if not isinstance(raw_labels, list) or not all(isinstance(x, str) and LABEL.match(x) for x in raw_labels):
            err((*path, "session"), "`session` takes `labels: [...]` (label names)")
            ok = False
        else:
            labels = tuple(raw_labels)
    history: list[tuple[str, dict[str, Any], Any]] = []
    raw_history = m.get("history", [])
    if not isinstance(raw_history, list):
        err((*path, "history"), "`history` must be a list of {tool, args, result}")
        ok = False
    else:
        for j, item in enumerate(raw_history):
            h = mapping(item, (*path, "history", j), _HISTORY, "a history entry")
            if h is None or not isinstance(h.get("tool"), str) or "/" not in h["tool"] or not isinstance(h.get("args", {}), dict):
                err((*path, "history", j), "a history entry needs `tool: UPSTREAM/TOOL`, optional `args` and `result`")
                ok = False
            else:
                history.append((h["tool"], h.get("args", {}), h.get("result")))
    if not ok or principal is None or tool is None or not isinstance(name, str):
        return None
    line, _ = smap.at(path)
    return Case(name, f"{smap.file}:{line}", principal, tool, args, annotations, Effect(expect), visible, tuple(decided),
                kind, workdir, labels, tuple(history))


def _call_target(call: dict[str, Any], path: Path, err: Any) -> tuple[str | None, Kind]:
    """``(UPSTREAM/NAME, kind)`` from exactly one of ``tool``, ``resource`` or ``prompt``."""
    given = [k for k in ("tool", "resource", "prompt") if k in call]
    if len(given) != 1:
        err(path, "`call` needs exactly one of `tool`, `resource` or `prompt`")
        return None, Kind.TOOL
    key = given[0]
    kind = Kind(key)
    value, upstream = call[key], call.get("upstream")
    if upstream is not None and (kind is not Kind.RESOURCE or not isinstance(upstream, str) or not UPSTREAM.match(upstream)):
        err((*path, "upstream"), "`call.upstream` names the upstream of a bare `resource` URI")
        return None, kind
    if not isinstance(value, str) or not value:
        err((*path, key), f"`call.{key}` must be a string")
        return None, kind
    if upstream is not None:
        return f"{upstream}/{value}", kind
    head, sep, rest = value.partition("/")
    if not sep or not rest or not UPSTREAM.match(head):
        what = "UPSTREAM/URI (or give `upstream`)" if kind is Kind.RESOURCE else f"UPSTREAM/{key.upper()}"
        err((*path, key), f"`call.{key}` must be {what}")
        return None, kind
    return value, kind


def session_of(policies: PolicySet, principal: Principal, labels: tuple[str, ...],
               history: tuple[tuple[str, dict[str, Any], Any], ...]) -> SessionView | None:
    """The session a case's call is decided in: its ``session.labels`` plus what its ``history``
    brought (labels and content, per the ``labels:`` entries and their ``parts``).  With labels
    but no history the content is unknown, so ``carries`` on a held label cannot be judged."""
    if not labels and not history:
        return None
    held = set(labels)
    index = ContentIndex() if history else None
    origins: dict[str, tuple[str, int | None]] = {}
    for tool, args, result in history:
        brings = policies.labels.brings(principal, Kind.TOOL, tool, args, None)
        for label in brings.labels - held:
            origins[label] = (tool, None)
        held |= brings.labels
        for entry_labels, parts in brings.entries:
            assert index is not None
            index.add(entry_labels, content_of(result, parts))
    return SessionView(frozenset(held), index, origins)


def run_case(policies: PolicySet, case: Case) -> CaseResult:
    paths = PathContext(case.workdir) if case.workdir else None
    flow = session_of(policies, case.principal, case.session_labels, case.history)
    decision = policies.decide(case.principal, case.tool, case.args, case.annotations, kind=case.kind, paths=paths, flow=flow)
    failures = []
    if decision.effect is not case.expect:
        failures.append(f"expected {case.expect}, got {decision.effect}")
    if case.visible is not None:
        shown = policies.visible(case.principal, case.tool, case.annotations, kind=case.kind)
        if shown is not case.visible:
            failures.append(f"expected the {case.kind} {'listed' if case.visible else 'hidden'}, it is {'listed' if shown else 'hidden'}")
    missing = [p for p in case.decided_by if p not in decision.policy_ids]
    if missing:
        failures.append(f"expected policy {', '.join(missing)} among the deciding policies {list(decision.policy_ids)}")
    detail = "; ".join(failures) + (" — " if failures else "") + decision.reason
    return CaseResult(case, not failures, detail)
