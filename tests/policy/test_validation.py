"""Policy and policy test files are validated by their document models, in check's own words.

- a mutated valid file either parses or says where it is wrong (``file:line:col``), never with a
  traceback or pydantic's own wording; and a file with no error never loses a policy or a rule;
- a key written as ``null`` is refused where it was once dropped in silence (``reason: null``
  made a deny rule vanish, and with it its whole policy), and kept where null is a value;
- an invalid part of a file does not hide the mistakes in the valid parts around it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from fixtures.mutation import mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.policy import parse_text
from mcp_guard.policy.testing import parse_test_file

PROBLEM = re.compile(r"^p\.yaml:\d+:\d+: \S.*")
PYDANTIC = ("Input should", "validation error", "type=", "Field required", "Extra inputs")

VALID: dict[str, Any] = {
    "version": 1,
    "labels": [{"tools": ["web/fetch"], "brings": ["untrusted"], "parts": ["body"]},
               {"upstreams": ["crm"], "brings": ["private"]}],
    "policies": [
        {"id": "p", "description": "d", "mode": "enforce", "subjects": {"users": ["*"], "agents": ["bot"]},
         "rules": [{"id": "r1", "effect": "deny", "tools": ["fs/write"], "reason": "no"},
                   {"effect": "allow", "tools": ["fs/read"], "annotations": {"readOnlyHint": True},
                    "when": {"args.path": {"under": "/srv", "max_length": 9}, "user": {"in": ["a", "b"]},
                             "args.n": {"min": 1, "max": 5}, "args.q": {"regex": "^a", "glob": "a*", "present": True},
                             "args.to": {"carries": {"labels": ["private"], "match": "token"}},
                             "session.labels": {"none_of": ["untrusted"]}}},
                   {"effect": "approve", "resources": ["docs/*"], "when": {"uri": {"under": "file:///srv"}}}],
         "limits": [{"tools": ["fs/*"], "per_minute": 5}]},
        {"id": "q", "rules": [{"effect": "allow", "prompts": ["git/*"]}]},
    ],
}
TESTS: dict[str, Any] = {
    "policies": "p.yaml",
    "cases": [{"name": "n", "principal": {"user": "u", "agents": ["a"], "purpose": "x"},
               "call": {"tool": "fs/read", "args": {"path": "/srv/a"}, "workdir": "/srv"}, "expect": "allow",
               "visible": True, "decided_by": ["p"], "session": {"labels": ["private"]},
               "history": [{"tool": "web/fetch", "args": {}, "result": {"body": "x"}}]}],
}
ODD = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(allow_nan=True), st.text(max_size=6),
                st.sampled_from(["alow", "fs", "fs/*", "Bad Label", "([", "~/x", "args.", "usr", "token"]),
                st.lists(st.sampled_from(["fs/x", "X", "", 3]), max_size=2),
                st.dictionaries(st.sampled_from(["bogus", "under", "labels", "tools", "effect"]), st.integers(0, 2), max_size=2))
ADDED = ["bogus", "tools", "when", "in", "id", "upstreams", "match"]


def _said_in_our_words(lines: list[str], file: str) -> None:
    assert lines
    for line in lines:
        assert re.match(rf"^{re.escape(file)}:\d+:\d+: \S", line), line
        assert not any(w in line for w in PYDANTIC), line


@settings(max_examples=300, deadline=None)  # a loaded CI machine stalls; not a timing test
@given(doc=mutated(VALID, ODD, ADDED))
def test_a_mutated_policy_file_parses_whole_or_says_where_it_is_wrong(doc: dict[str, Any]) -> None:
    parsed = parse_text(yaml.safe_dump(doc, sort_keys=False), "p.yaml")
    if parsed.errors:
        _said_in_our_words([str(p) for p in parsed.errors], "p.yaml")
        return
    # no error: nothing written was dropped on the way
    written = doc.get("policies") or []
    assert [p.id for p in parsed.policies] == [p["id"] for p in written]
    assert [len(p.rules) for p in parsed.policies] == [len(p["rules"]) for p in written]
    assert len(parsed.labels) == len(doc.get("labels") or [])


@settings(max_examples=200, deadline=None)  # a loaded CI machine stalls; not a timing test
@given(doc=mutated(TESTS, ODD, ADDED))
def test_a_mutated_policy_test_file_reads_whole_or_says_where_it_is_wrong(doc: dict[str, Any]) -> None:
    got = parse_test_file(yaml.safe_dump(doc, sort_keys=False), "t.test.yaml")
    if got.problems:
        _said_in_our_words([str(p) for p in got.problems], "t.test.yaml")
    else:
        assert len(got.cases) == len(doc["cases"])


@pytest.mark.parametrize("key", ["tool", "resource", "prompt"])
def test_an_empty_call_target_is_refused_never_a_case_dropped_in_silence(key: str) -> None:
    """A case whose ``call`` names the empty string was once dropped with no problem said: a test
    file that passes while checking nothing."""
    case = {"name": "n", "principal": {"user": "u", "agents": ["a"]}, "call": {key: ""}, "expect": "allow"}
    got = parse_test_file(yaml.safe_dump({"policies": "p.yaml", "cases": [case]}, sort_keys=False), "t.test.yaml")
    assert not got.cases and len(got.problems) == 1 and got.problems[0].message.startswith(f"`call.{key}` must be"), got.problems


def _lines(text: str) -> list[str]:
    return parse_text(text, "p.yaml").lines()


def test_a_null_reason_is_refused_where_it_once_dropped_a_deny_in_silence() -> None:
    text = "version: 1\npolicies:\n  - id: p\n    rules:\n      - {effect: deny, tools: [fs/x], reason: null}\n"
    assert _lines(text) == ["p.yaml:5:47: `reason` must be a non-empty string"]


def test_null_is_refused_everywhere_but_where_it_is_a_value() -> None:
    rule = "version: 1\npolicies:\n  - id: p\n    rules:\n      - effect: deny\n        tools: [fs/x]\n"
    assert _lines(rule + "        when: {args.a: {equals: null}}\n") == []
    assert parse_text(rule + "        when: {args.a: {equals: null}}\n").policies[0].rules[0].when[0].ops == (("equals", None),)
    assert _lines(rule + "        when: {args.a: {glob: null}}\n") == ["p.yaml:7:31: `glob` needs a non-empty string"]
    assert _lines(rule + "        reason: '  '\n") == ["p.yaml:7:17: `reason` must be a non-empty string"]
    assert _lines(rule + "        when: {1: {equals: 1}}\n") == ["p.yaml:7:16: key `1` must be a string"]
    assert _lines(rule + "        id: null\n") == ["p.yaml:7:13: rule id `None` must be letters, digits and _.:@- (at most 128)"]
    assert _lines(rule.replace("    rules:", "    subjects: null\n    rules:")) == ["p.yaml:4:15: subjects must be a mapping"]


def test_numbers_must_be_finite_and_operands_keep_their_written_form() -> None:
    rule = "version: 1\npolicies:\n  - id: p\n    rules:\n      - effect: deny\n        tools: [fs/x]\n        when: {args.n: "
    assert _lines(rule + "{min: .nan}}\n") == ['p.yaml:7:30: `min` needs a number (write it unquoted: min: 1, not min: "1")']
    assert _lines(rule + "{max: true}}\n") == ['p.yaml:7:30: `max` needs a number (write it unquoted: max: 1, not max: "1")']
    cond = parse_text(rule + "{max: 5, min: 1}}\n").policies[0].rules[0].when[0]
    assert cond.ops == (("max", 5), ("min", 1)) and isinstance(cond.ops[1][1], int)  # as written, in order


def test_an_invalid_rule_does_not_hide_the_mistakes_beside_it() -> None:
    text = """version: 1
policies:
  - id: p
    rules:
      - effect: alow
        tools: ["fs/x"]
        when:
          args.q: {regex: "(", undr: /srv}
          uri: {min: 1}
      - effect: allow
        tools: [bad]
"""
    assert _lines(text) == [
        "p.yaml:5:17: unknown effect `alow` (did you mean `allow`?)",
        "p.yaml:8:27: invalid regex `(`: missing ), unterminated subpattern at position 0",
        "p.yaml:8:32: unknown operator `undr` (did you mean `under`?)",
        "p.yaml:9:17: operator `min` does not apply to `uri` (uri takes equals, in, not_in, glob, regex, under, present)",
        "p.yaml:11:17: tool `bad` must be written UPSTREAM/TOOL (globs may use * within a segment, e.g. fs/read_* or */delete*)",
    ]


def test_a_test_file_names_what_a_case_is_missing() -> None:
    got = parse_test_file("cases:\n  - name: n\n    principal: {agent: a}\n    call: {tool: fs/x, upstream: fs}\n", "t.test.yaml")
    assert sorted(str(p) for p in got.problems) == [
        "t.test.yaml:2:5: test case needs `expect` (allow, deny or approve)",
        "t.test.yaml:3:16: principal needs a `user` string",
        "t.test.yaml:4:34: `call.upstream` names the upstream of a bare `resource` URI",
    ]
