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
from mcp_guard.policy.document import UPSTREAM, CallDoc, CaseDoc, TestFileDoc
from mcp_guard.policy.engine import PolicySet
from mcp_guard.policy.messages import validated
from mcp_guard.policy.model import Effect
from mcp_guard.yamlsrc import Path, Problem, SourceReader, YamlSyntaxError, load


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
    """A policy test file validated by ``document.TestFileDoc``; every problem at once."""
    out = TestFile(file)
    try:
        data, smap = load(text, file)
    except YamlSyntaxError as exc:
        out.problems.append(exc.problem)
        return out
    r = SourceReader(smap, out.problems)
    doc = validated(TestFileDoc, data, r)
    if doc is None:
        return out
    if doc.policies is not None:
        out.policies = (doc.policies,) if isinstance(doc.policies, str) else tuple(doc.policies)
    for i, cdoc in enumerate(doc.cases or ()):
        case = _case(r, cdoc, ("cases", i))
        if case is not None:
            out.cases.append(case)
    return out


def _case(r: SourceReader, doc: CaseDoc | None, path: Path) -> Case | None:
    if doc is None:
        return None
    principal = None
    if (pr := doc.principal) is not None and pr.valid:
        if pr.agent is not None and pr.agents is not None:
            r.error((*path, "principal"), "principal takes `agent` (a string) or `agents` (a list, origin side first)")
        else:
            principal = Principal(user=pr.user, agents=tuple(pr.agents if pr.agents is not None else [pr.agent] if pr.agent is not None else []),
                                  purpose=pr.purpose)
    tool, kind = _call_target(r, doc.call, (*path, "call")) if doc.call is not None else (None, Kind.TOOL)
    if not doc.valid or principal is None or tool is None or doc.call is None:
        return None
    line, _ = r.smap.at(path)
    decided = (doc.decided_by,) if isinstance(doc.decided_by, str) else tuple(doc.decided_by or ())
    history = tuple((h.tool, h.args or {}, h.result) for h in doc.history or () if h is not None)
    return Case(doc.name, f"{r.smap.file}:{line}", principal, tool, doc.call.args or {}, doc.call.annotations, Effect(doc.expect),
                doc.visible, decided, kind, doc.call.workdir, tuple(doc.session.labels) if doc.session else (), history)


def _call_target(r: SourceReader, call: CallDoc, path: Path) -> tuple[str | None, Kind]:
    """``(UPSTREAM/NAME, kind)`` from exactly one of ``tool``, ``resource`` or ``prompt``."""
    given = [k for k in ("tool", "resource", "prompt") if k in call.model_fields_set]
    if len(given) != 1:
        r.error(path, "`call` needs exactly one of `tool`, `resource` or `prompt`")
        return None, Kind.TOOL
    key = given[0]
    kind = Kind(key)
    value, upstream = getattr(call, key), call.upstream
    if "upstream" in call.model_fields_set and (kind is not Kind.RESOURCE or upstream is None):
        r.error((*path, "upstream"), "`call.upstream` names the upstream of a bare `resource` URI")
        return None, kind
    if not isinstance(value, str):
        return None, kind  # the model said what is wrong with it
    if upstream is not None and value:
        return f"{upstream}/{value}", kind
    head, sep, rest = value.partition("/")
    if not sep or not rest or not UPSTREAM.fullmatch(head):
        what = "UPSTREAM/URI (or give `upstream`)" if kind is Kind.RESOURCE else f"UPSTREAM/{key.upper()}"
        r.error((*path, key), f"`call.{key}` must be {what}")
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
