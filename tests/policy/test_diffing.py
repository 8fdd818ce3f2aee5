"""The pure parts of ``diff`` and ``replay``: a principal's standing toward a target, what counts
as widening, and the lints and risk readings that come from pinned definitions."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ALICE, policy_set

from mcp_guard.diffing import (
    DiffTarget,
    Standing,
    chain_decided,
    compare,
    diff,
    replay_one,
    standing,
    subject_principals,
    witness,
)
from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.policy import Effect
from mcp_guard.policy.siblings import path_arguments, sibling_warnings
from mcp_guard.report_risk import risks

READ = DiffTarget(Kind.TOOL, "fs/read")


def rules(*rs: dict[str, Any], subjects: dict[str, Any] | None = None) -> Any:
    return policy_set({"id": "p", "rules": list(rs), **({"subjects": subjects} if subjects else {})})


def allow(**extra: Any) -> dict[str, Any]:
    return {"effect": "allow", "tools": ["fs/read"], **extra}


UNDER = {"args.path": {"under": "/srv"}}


@pytest.mark.parametrize(("policy", "expected"), [
    (rules(allow()), Standing(Effect.ALLOW, rules=("p#1",))),
    (rules(allow(when=UNDER)), "conditional allow"),
    (rules(allow(), allow(when=UNDER)), Standing(Effect.ALLOW, rules=("p#1",))),  # conditions add nothing
    (rules(allow(), {"effect": "deny", "tools": ["fs/read"], "when": UNDER}), "conditional allow"),  # a conditional deny
    (rules(allow(), {"effect": "deny", "tools": ["fs/*"]}), Standing(Effect.DENY, rules=("p#2",))),  # an unconditional deny wins
    (rules({"effect": "approve", "tools": ["fs/read"]}, allow()), Standing(Effect.APPROVE, rules=("p#1",))),
    (rules({"effect": "approve", "tools": ["fs/read"]}, allow(when=UNDER)), Standing(Effect.APPROVE, rules=("p#1",))),
    (rules({"effect": "deny", "tools": ["fs/read"], "when": UNDER}), Standing(Effect.DENY)),  # nothing permits it
    (rules(allow(when={"user": {"equals": "bob"}})), Standing(Effect.DENY, rules=("p#1",))),  # not for this principal (cited)
    (rules(allow(), subjects={"users": ["bob"]}), Standing(Effect.DENY)),
])
def test_standing(policy: Any, expected: Standing | str) -> None:
    got = standing(policy, ALICE, READ)
    if isinstance(expected, str):
        assert got.conditional and str(got.effect) == expected.split()[1], got
    else:
        assert got == expected


@pytest.mark.parametrize(("old", "new", "change"), [
    (Standing(Effect.DENY), Standing(Effect.ALLOW), "widened"),
    (Standing(Effect.APPROVE), Standing(Effect.ALLOW), "widened"),
    (Standing(Effect.ALLOW), Standing(Effect.APPROVE), "narrowed"),
    (Standing(Effect.ALLOW), Standing(Effect.ALLOW, True, ("allow: x",)), "now conditional"),
    (Standing(Effect.ALLOW, True, ("allow: x",)), Standing(Effect.ALLOW), "widened"),  # conditional -> always
    (Standing(Effect.ALLOW, True, ("allow: x",)), Standing(Effect.ALLOW, True, ("allow: y",)), "conditions changed"),
    (Standing(Effect.ALLOW, rules=("a#1",)), Standing(Effect.ALLOW, rules=("b#1",)), None),  # other rule, same power
])
def test_compare(old: Standing, new: Standing, change: str | None) -> None:
    assert compare(old, new) == change


def test_a_changed_condition_cannot_be_proven_narrower_so_it_gates() -> None:
    old = rules(allow(when=UNDER))
    new = rules(allow(when={"args.path": {"under": "/"}}))
    (change,) = diff(old, new, [ALICE], [READ])
    assert change.change == "conditions changed" and change.widening


def test_principals_come_from_every_subjects_list_with_a_witness_for_each_glob() -> None:
    ps = policy_set({"id": "a", "subjects": {"users": ["*@ops.example"], "agents": ["bot-?"]}, "rules": [allow()]})
    found = {(p.user, p.agents) for p in subject_principals([ps])}
    assert found == {("someone", ()), ("x@ops.example", ("bot-x",))}
    assert witness("a*b") == "axb" and witness("[") in ("[", None)


def test_replay_without_arguments_lists_what_depends_on_them() -> None:
    ps = rules(allow(when=UNDER))
    got = replay_one(ps, 3, "t", ALICE, READ, "allow", None, None, 0.0)
    assert got is not None and got.new is None and got.status == "depends on arguments"
    assert replay_one(ps, 3, "t", ALICE, READ, "allow", {"path": "/srv/a"}, None, 0.0) is None
    denied = replay_one(ps, 3, "t", ALICE, READ, "allow", {"path": "/srv/../etc/passwd"}, None, 0.0)
    assert denied is not None and denied.new is Effect.DENY and denied.status == "narrowed"
    assert replay_one(rules(allow()), 1, "t", ALICE, READ, "deny", None, None, 0.0).status == "widened"  # type: ignore[union-attr]


def test_a_refusal_by_the_grant_chain_is_not_the_policies_to_re_decide() -> None:
    assert chain_decided({"grant_id": "j", "decision": "deny", "reason": "mcp-guard denied fs/read: grant link x does not permit it"})
    assert not chain_decided({"grant_id": "j", "decision": "deny", "reason": "mcp-guard denied fs/read: no (policy p)"})
    assert not chain_decided({"grant_id": None, "decision": "deny", "reason": "whatever"})


def test_path_arguments_by_schema() -> None:
    schema = {"inputSchema": {"properties": {
        "path": {"type": "string"}, "paths": {"type": "array", "items": {"type": "string"}},
        "source": {"type": "string"}, "pattern": {"type": "string"}, "head": {"type": "number"},
        "filePath": {"type": "string"}, "pathCount": {"type": "integer"}, "dir": {"type": "object"}}}}
    assert path_arguments(schema) == ("path", "paths", "source", "filePath")
    assert path_arguments({"inputSchema": "not a schema"}) == ()


DEFS = {"fs": {
    "read_text_file": {"inputSchema": {"properties": {"path": {"type": "string"}}}},
    "read_multiple_files": {"inputSchema": {"properties": {"paths": {"type": "array", "items": {"type": "string"}}}}},
    "list_allowed_directories": {"inputSchema": {"properties": {}}},
}}


def _policy(text_rules: str) -> list[tuple[str, str]]:
    return [("p.yaml", "version: 1\npolicies:\n  - id: p\n    rules:\n" + text_rules)]


def test_sibling_warning_names_the_open_siblings_and_not_the_closed_ones() -> None:
    src = _policy("      - effect: allow\n        tools: [fs/read_multiple_files, fs/list_allowed_directories]\n"
                  "      - effect: allow\n        tools: [fs/read_text_file]\n        when: {args.path: {under: /srv}}\n")
    (w,) = sibling_warnings(src, DEFS)
    assert (w.file, w.line, w.severity) == ("p.yaml", 9, "warning")
    assert "fs/read_multiple_files (p#1)" in w.message and "list_allowed_directories" not in w.message
    closed = _policy("      - effect: allow\n        tools: [fs/read_multiple_files]\n        when: {'args.paths[*]': {under: /srv}}\n"
                     "      - effect: allow\n        tools: [fs/read_text_file]\n        when: {args.path: {under: /srv}}\n")
    assert sibling_warnings(closed, DEFS) == []
    denied = _policy("      - effect: deny\n        tools: [fs/read_multiple_files]\n"
                     "      - effect: allow\n        tools: ['fs/*']\n        when: {args.path: {under: /srv}}\n")
    # fs/* with args.path: read_multiple_files has no `path`, so that allow never matches it; it is denied anyway
    assert sibling_warnings(denied, DEFS) == []
    assert sibling_warnings([("broken.yaml", "version: 1\npolicies: [")], DEFS) == []


@pytest.mark.parametrize(("annotations", "expected"), [
    ({"readOnlyHint": True, "openWorldHint": False}, ()),
    ({"readOnlyHint": False, "destructiveHint": False, "openWorldHint": False}, ("writes",)),
    ({"readOnlyHint": False, "destructiveHint": True, "openWorldHint": False}, ("destructive", "writes")),
    ({"readOnlyHint": True}, ("open-world",)),  # absent hints read as MCP's pessimistic defaults
    (None, ("destructive", "open-world", "writes")),
    ({"readOnlyHint": "yes"}, ("destructive", "open-world", "writes")),  # not a boolean: the default
])
def test_risks(annotations: Any, expected: tuple[str, ...]) -> None:
    assert risks(annotations) == expected


def test_diff_over_resources_and_prompts_too() -> None:
    old = policy_set({"id": "p", "rules": [{"effect": "allow", "resources": ["docs/file:///srv/*"], "prompts": ["git/commit"]}]})
    new = policy_set({"id": "p", "rules": [{"effect": "allow", "resources": ["docs/*"]}]})
    who = Principal(user="u")
    changes = {(c.target.kind, c.target.name, c.change) for c in diff(old, new, [who], [
        DiffTarget(Kind.RESOURCE, "docs/file:///etc/passwd"), DiffTarget(Kind.RESOURCE, "docs/file:///srv/a"), DiffTarget(Kind.PROMPT, "git/commit")])}
    assert changes == {(Kind.RESOURCE, "docs/file:///etc/passwd", "widened"), (Kind.PROMPT, "git/commit", "narrowed")}


def test_names_from_the_audit_log_cannot_forge_a_line_of_diff_output() -> None:
    from pathlib import Path

    from mcp_guard.cli.diff import render_diff
    from mcp_guard.diffing import Change

    evil = Principal(user="u", agents=("bot\nwidened  fs/everything  user:root: deny -> allow\u202e",))
    change = Change(evil, DiffTarget(Kind.TOOL, "fs/x\r\ny"), Standing(Effect.DENY), Standing(Effect.ALLOW), "widened")
    lines = render_diff([change], Path("a"), Path("b"), 1, 1)
    assert len(lines) == 3  # header, the one change, the summary
    assert "bot\\u000awidened" in lines[1] and "\\u202e" in lines[1] and "fs/x\\u000d\\u000ay" in lines[1]
