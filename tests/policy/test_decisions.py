"""Combining (deny > approve > allow > default deny), tool globs, subjects, discovery, reasons, limits, reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ALICE, policy_set

from mcp_guard.errors import ConfigError
from mcp_guard.identity import Principal
from mcp_guard.policy import Effect, PolicyLoadError, PolicySet, RuleRef, load, load_sources


def rules(*effects: str, tool: str = "fs/read") -> PolicySet:
    return policy_set({"id": "p", "rules": [{"effect": e, "tools": [tool]} for e in effects]})


@pytest.mark.parametrize(
    ("effects", "expected"),
    [
        ((), Effect.DENY),
        (("allow",), Effect.ALLOW),
        (("approve",), Effect.APPROVE),
        (("deny",), Effect.DENY),
        (("allow", "approve"), Effect.APPROVE),
        (("approve", "allow"), Effect.APPROVE),
        (("allow", "deny"), Effect.DENY),
        (("deny", "allow"), Effect.DENY),
        (("approve", "deny"), Effect.DENY),
        (("allow", "approve", "deny"), Effect.DENY),
    ],
)
def test_deny_beats_approve_beats_allow(effects: tuple[str, ...], expected: Effect) -> None:
    assert rules(*effects).decide(ALICE, "fs/read").effect is expected


def test_combining_works_across_policies() -> None:
    ps = policy_set({"id": "a", "rules": [{"effect": "allow", "tools": ["fs/*"]}]},
                    {"id": "b", "rules": [{"effect": "deny", "tools": ["fs/write"], "reason": "No writes."}]})
    assert ps.decide(ALICE, "fs/read").allowed
    d = ps.decide(ALICE, "fs/write")
    assert d.effect is Effect.DENY and d.rules == (RuleRef("b", "1"),) and d.policy_ids == ("b",)
    assert d.reason == "mcp-guard denied fs/write: No writes (policy b)"


def test_an_empty_set_denies_and_hides() -> None:
    ps = PolicySet.empty()
    d = ps.decide(ALICE, "fs/read")
    assert d.effect is Effect.DENY and d.rules == ()
    assert not ps.visible(ALICE, "fs/read")


def test_decision_names_every_matching_rule_of_the_winning_effect() -> None:
    ps = policy_set({"id": "a", "rules": [{"effect": "allow", "tools": ["fs/*"]}, {"id": "r", "effect": "allow", "tools": ["fs/read"]}]},
                    {"id": "b", "rules": [{"effect": "allow", "tools": ["*/read"]}]})
    d = ps.decide(ALICE, "fs/read")
    assert d.rule_ids == ("a#1", "a#r", "b#1")
    assert d.policy_ids == ("a", "b")


@pytest.mark.parametrize(
    ("pattern", "tool", "expected"),
    [
        ("fs/read_*", "fs/read_file", True),
        ("fs/read_*", "fs/write_file", False),
        ("*/delete*", "memory/delete_entities", True),
        ("*/*", "git/git_status", True),
        ("fs/*", "fs2/read", False),
        ("fs/*", "fs/a/b", False),  # * stays within a segment
        ("f?/read", "fs/read", True),
        ("fs/read", "fs/read", True),
        ("fs/read", "fs/reader", False),
    ],
)
def test_tool_globs(pattern: str, tool: str, expected: bool) -> None:
    assert rules("allow", tool=pattern).decide(ALICE, tool).allowed is expected


@pytest.mark.parametrize(
    ("subjects", "expected"),
    [
        ({}, True),
        ({"users": ["*@example.com"]}, True),
        ({"users": ["bob@example.com"]}, False),
        ({"agents": ["support-*"]}, True),
        ({"agents": ["coder"]}, False),
        ({"purposes": ["ticket-triage"]}, True),
        ({"purposes": ["billing"]}, False),
        ({"users": ["*"], "agents": ["support-bot"], "purposes": ["*"]}, True),
    ],
)
def test_subjects(subjects: dict[str, list[str]], expected: bool) -> None:
    ps = policy_set({"id": "p", "subjects": subjects, "rules": [{"effect": "allow", "tools": ["fs/read"]}]})
    assert ps.decide(ALICE, "fs/read").allowed is expected
    assert ps.visible(ALICE, "fs/read") is expected


def test_subjects_match_the_origin_user_and_the_acting_agent() -> None:
    ps = policy_set({"id": "p", "subjects": {"users": ["alice"], "agents": ["summarizer"]}, "rules": [{"effect": "allow", "tools": ["fs/read"]}]})
    assert ps.decide(Principal("alice", ("planner", "summarizer")), "fs/read").allowed
    assert not ps.decide(Principal("alice", ("summarizer", "planner")), "fs/read").allowed


def test_discovery_ignores_argument_conditions_but_not_unconditional_denies() -> None:
    ps = policy_set({"id": "p", "rules": [
        {"effect": "allow", "tools": ["fs/*"], "when": {"args.path": {"under": "/srv"}}},
        {"effect": "deny", "tools": ["fs/move"]},
        {"effect": "deny", "tools": ["fs/write"], "when": {"args.path": {"glob": "*.env"}}},
        {"effect": "deny", "tools": ["fs/admin"], "when": {"chain.depth": {"min": 1}}},
    ]})
    assert ps.visible(ALICE, "fs/read")
    assert ps.visible(ALICE, "fs/write")  # the deny has an argument condition
    assert not ps.visible(ALICE, "fs/move")
    assert not ps.visible(ALICE, "fs/admin")  # principal conditions are known at list time
    assert ps.visible(Principal("alice"), "fs/admin")
    assert not ps.visible(ALICE, "git/log")


def test_the_reason_quotes_the_failed_condition_never_the_argument() -> None:
    ps = policy_set({"id": "support-tickets", "rules": [{"effect": "approve", "tools": ["fs/write_file"], "when": {"args.path": {"under": "/srv/tickets"}}}]})
    d = ps.decide(ALICE, "fs/write_file", {"path": "/etc/SECRET-VALUE"})
    assert d.reason == "mcp-guard denied fs/write_file: args.path must be under /srv/tickets (policy support-tickets)"
    assert "SECRET-VALUE" not in d.reason
    assert d.policy_ids == ("support-tickets",) and d.rules == () and d.cited == RuleRef("support-tickets", "1")


def test_the_default_deny_names_no_policy() -> None:
    d = rules("allow").decide(ALICE, "fs/other")
    assert d.reason == "mcp-guard denied fs/other: no policy allows it for this principal"
    assert d.policy_ids == ()


def test_explain_agrees_with_decide_and_does_not_short_circuit() -> None:
    ps = policy_set({"id": "p", "rules": [
        {"effect": "deny", "tools": ["fs/*"], "when": {"args.x": {"equals": 1}}},
        {"effect": "allow", "tools": ["fs/read"], "when": {"args.y": {"equals": 2}, "args.z": {"equals": 3}}},
    ]}, {"id": "q", "subjects": {"users": ["nobody"]}, "rules": [{"effect": "allow", "tools": ["fs/read"]}]})
    for args in ({}, {"x": 1}, {"y": 2, "z": 3}, {"x": 1, "y": 2, "z": 3}, {"y": 2}):
        e = ps.explain(ALICE, "fs/read", args)
        assert e.decision == ps.decide(ALICE, "fs/read", args)
    e = ps.explain(ALICE, "fs/read", {"x": 1})
    rule2 = e.policies[0].rules[1]
    assert [ok for _, ok in rule2.conditions] == [False, False]  # both evaluated
    assert e.policies[1].subjects_failing == "users" and not e.policies[1].rules[0].matched


def test_limits_follow_subjects_and_tools() -> None:
    ps = policy_set({"id": "p", "subjects": {"agents": ["support-bot"]}, "rules": [{"effect": "allow", "tools": ["fs/*"]}],
                     "limits": [{"tools": ["fs/*"], "per_minute": 60, "per_session": 500}, {"tools": ["git/*"], "per_session": 5}]})
    (lim,) = ps.limits(ALICE, "fs/read")
    assert (lim.per_minute, lim.per_session, lim.key) == (60, 500, "p/limit1")
    assert ps.limits(Principal("alice", ("other",)), "fs/read") == ()


def test_load_reads_a_directory_and_merges_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\npolicies:\n  - id: a\n    rules: [{effect: allow, tools: [fs/read]}]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("version: 1\npolicies:\n  - id: b\n    rules: [{effect: deny, tools: [fs/read]}]\n")
    (tmp_path / "a.test.yaml").write_text("cases: []\n")  # test files are not policies
    ps = load(tmp_path)
    assert [p.id for p in ps.policies] == ["a", "b"]
    assert ps.decide(ALICE, "fs/read").effect is Effect.DENY


def test_load_errors_are_config_errors_with_every_problem() -> None:
    with pytest.raises(PolicyLoadError) as info:
        load_sources([("a.yaml", "version: 1\npolicies:\n  - id: a\n    rules: [{effect: alow, tools: [fs/read]}]\n"),
                      ("b.yaml", "version: 2\npolicies: []\n")])
    assert isinstance(info.value, ConfigError)
    assert [line.split(": ")[0] for line in info.value.problems] == ["a.yaml:4:22", "b.yaml:1:10"]
