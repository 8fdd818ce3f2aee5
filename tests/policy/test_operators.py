"""Every operator, type-strict, with path-escape variants for ``under``."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ALICE, allows, one_rule

from mcp_guard.identity import Principal


@pytest.mark.parametrize(
    ("operand", "value", "expected"),
    [
        ("read", "read", True),
        ("read", "write", False),
        (50, 50, True),
        (50, 50.0, True),
        (50, "50", False),  # the string "50" is not a number
        ("50", 50, False),
        (True, True, True),
        (True, 1, False),  # a boolean is not a number
        (1, True, False),
        (None, None, True),
        ([1, 2], [1, 2], True),
        ([1, 2], [1, "2"], False),
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": True}, False),
    ],
)
def test_equals_is_type_strict(operand: Any, value: Any, expected: bool) -> None:
    assert allows(one_rule({"args.x": {"equals": operand}}), {"x": value}) is expected


@pytest.mark.parametrize(
    ("operand", "value", "expected"),
    [
        (["a", "b"], "a", True),
        (["a", "b"], "c", False),
        ([1, 2], 2, True),
        ([1, 2], "2", None),  # a string against numbers: the wrong type, so unjudgeable
        ([1, 2], True, None),
        (["1", 2, None], None, True),
        (["1", 2, None], 1, False),
    ],
)
def test_in_and_not_in_are_type_strict(operand: list[Any], value: Any, expected: bool | None) -> None:
    assert allows(one_rule({"args.x": {"in": operand}}), {"x": value}) is (expected is True)
    # not_in on a value of the wrong type is unjudgeable too: it never lets an allow match
    assert allows(one_rule({"args.x": {"not_in": operand}}), {"x": value}) is (expected is False)
    # ... and it makes a deny match
    denied = one_rule({"args.x": {"in": operand}}, effect="deny")
    assert (denied.decide(ALICE, "fs/read", {"x": value}).effect.value == "deny")


def test_not_in_on_a_missing_argument_is_false() -> None:
    assert not allows(one_rule({"args.x": {"not_in": ["a"]}}), {})


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*.md", "notes.md", True),
        ("*.md", "notes.md.exe", False),
        ("report-?.txt", "report-1.txt", True),
        ("report-?.txt", "report-12.txt", False),
        ("[ab]", "[ab]", True),  # only * and ? are special
        ("[ab]", "a", False),
        ("*.md", 5, False),
    ],
)
def test_glob(pattern: str, value: Any, expected: bool) -> None:
    assert allows(one_rule({"args.x": {"glob": pattern}}), {"x": value}) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("[a-z]+", "abc", True),
        ("[a-z]+", "abc; rm -rf /", False),  # full match, not search
        ("[a-z]+", "ABC", False),
        ("a|b", "ab", False),
        ("[0-9]+", 123, False),  # a number is not a string
    ],
)
def test_regex_is_a_full_match(pattern: str, value: Any, expected: bool) -> None:
    assert allows(one_rule({"args.x": {"regex": pattern}}), {"x": value}) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/srv/tickets", True),
        ("/srv/tickets/", True),
        ("/srv/tickets/42.md", True),
        ("/srv/tickets/a/b/../c", True),
        ("//srv//tickets//42.md", True),
        ("/srv/./tickets/./42.md", True),
        ("/srv/tickets/../secrets", False),
        ("/srv/tickets/a/../../secrets", False),
        ("/srv/tickets/..", False),
        ("/srv/tickets-old/1", False),  # a shared prefix is not containment
        ("/srv/ticketsX", False),
        ("/srv", False),
        ("srv/tickets/42.md", False),  # relative is never under an absolute root
        ("./srv/tickets", False),
        ("tickets/../../srv/tickets", False),
        ("/../srv/tickets/1", True),  # .. at the root stays at the root, as the kernel does
        ("/srv/tickets\\..\\..\\etc", False),  # backslashes are never judged inside
        ("/srv/tickets/\x00/x", False),
        ("", False),
        (42, False),
        (["/srv/tickets/1"], False),
    ],
)
def test_under_resists_escapes(value: Any, expected: bool) -> None:
    assert allows(one_rule({"args.path": {"under": "/srv/tickets"}}), {"path": value}) is expected


@pytest.mark.parametrize("root", ["/srv/tickets/", "//srv/tickets", "/srv/./tickets", "/srv/x/../tickets"])
def test_under_normalises_the_root_too(root: str) -> None:
    ps = one_rule({"args.path": {"under": root}})
    assert allows(ps, {"path": "/srv/tickets/1"})
    assert not allows(ps, {"path": "/srv/ticketsX/1"})


@pytest.mark.parametrize(("value", "expected"), [("work/a", True), ("work", True), ("./work/a", True),
                                                 ("/work/a", False), ("work/../etc", False), ("../work/a", False)])
def test_under_a_relative_root(value: str, expected: bool) -> None:
    assert allows(one_rule({"args.path": {"under": "work"}}), {"path": value}) is expected


@pytest.mark.parametrize("root", [".", "work", "/home/alice"])
@pytest.mark.parametrize("value", ["~", "~/work/a", "~alice/work", "~/.ssh/id_rsa"])
def test_a_home_relative_path_is_never_under_anything(root: str, value: str) -> None:
    # server-filesystem expands `~` to the home directory: it is neither relative nor judgeable
    assert not allows(one_rule({"args.path": {"under": root}}), {"path": value})


@pytest.mark.parametrize(("value", "expected"), [("abc", True), ("abcd", False), ([1, 2, 3], True), ([1, 2, 3, 4], False),
                                                 (123, False), ({"a": 1}, False)])
def test_max_length_counts_characters_or_elements(value: Any, expected: bool) -> None:
    assert allows(one_rule({"args.x": {"max_length": 3}}), {"x": value}) is expected


@pytest.mark.parametrize(("value", "expected"), [(1, True), (10, True), (5.5, True), (0, False), (11, False),
                                                 ("5", False), (True, False), (None, False)])
def test_min_and_max_need_numbers(value: Any, expected: bool) -> None:
    assert allows(one_rule({"args.n": {"min": 1, "max": 10}}), {"n": value}) is expected


def test_present() -> None:
    must = one_rule({"args.x": {"present": True}})
    must_not = one_rule({"args.x": {"present": False}})
    assert allows(must, {"x": None}) and not allows(must, {})
    assert allows(must_not, {}) and not allows(must_not, {"x": 1})


def test_a_missing_or_mistyped_argument_is_false() -> None:
    ps = one_rule({"args.a.b": {"equals": 1}})
    assert allows(ps, {"a": {"b": 1}})
    assert not allows(ps, {})
    assert not allows(ps, {"a": "b"})
    assert not allows(ps, {"a": [{"b": 1}]})
    assert not allows(ps, None)


def test_every_element_must_hold_and_there_must_be_one() -> None:
    ps = one_rule({"args.files[*].path": {"under": "/srv"}})
    assert allows(ps, {"files": [{"path": "/srv/a"}, {"path": "/srv/b"}]})
    assert not allows(ps, {"files": [{"path": "/srv/a"}, {"path": "/etc/b"}]})
    assert not allows(ps, {"files": [{"path": "/srv/a"}, {"name": "b"}]})
    assert not allows(ps, {"files": []})
    assert not allows(ps, {"files": {"path": "/srv/a"}})


def test_nested_stars_flatten() -> None:
    ps = one_rule({"args.groups[*][*]": {"in": ["a", "b"]}})
    assert allows(ps, {"groups": [["a"], ["b", "a"]]})
    assert not allows(ps, {"groups": [["a"], ["c"]]})


def test_several_operators_on_one_key_all_hold() -> None:
    ps = one_rule({"args.x": {"glob": "a*", "max_length": 3}})
    assert allows(ps, {"x": "abc"})
    assert not allows(ps, {"x": "abcd"})
    assert not allows(ps, {"x": "bcd"})


def test_principal_conditions() -> None:
    ps = one_rule({"user": {"glob": "*@example.com"}, "agent": {"equals": "support-bot"},
                   "purpose": {"in": ["ticket-triage"]}, "chain.depth": {"max": 1}})
    assert allows(ps)
    assert not allows(ps, who=Principal(user="alice@example.com", agents=("x", "support-bot"), purpose="ticket-triage"))
    assert not allows(ps, who=Principal(user="alice@example.com", agents=("support-bot",)))
    assert not allows(ps, who=Principal(user="eve@evil.test", agents=("support-bot",), purpose="ticket-triage"))


def test_a_missing_purpose_or_agent_fails_its_condition() -> None:
    assert not allows(one_rule({"purpose": {"glob": "*"}}), who=Principal(user="u"))
    assert not allows(one_rule({"agent": {"glob": "*"}}), who=Principal(user="u"))
    assert allows(one_rule({"purpose": {"present": False}}), who=Principal(user="u"))


def test_annotation_selectors_read_absent_hints_pessimistically() -> None:
    ro = one_rule(annotations={"readOnlyHint": True}, tools=["fs/*"])
    destructive = one_rule(effect="deny", annotations={"destructiveHint": True}, tools=["fs/*"])
    assert ro.decide(ALICE, "fs/read", annotations={"readOnlyHint": True}).allowed
    assert not ro.decide(ALICE, "fs/read", annotations=None).allowed  # untrusted: not read-only
    assert not ro.decide(ALICE, "fs/read", annotations={"readOnlyHint": "yes"}).allowed
    assert destructive.decide(ALICE, "fs/x", annotations=None).rules  # untrusted: destructive
    assert not destructive.decide(ALICE, "fs/x", annotations={"destructiveHint": False}).rules
