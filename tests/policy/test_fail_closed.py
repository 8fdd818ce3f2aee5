"""Fail closed: a value that cannot be judged never slips past a deny (and never satisfies an allow).

Concrete escapes first (relative paths, ``~``, ``..``, NFD spellings, case, percent-encoding,
symbolic links, wrong types, lists), then hypothesis properties over generated values.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import ALICE, policy_set
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mcp_guard.config import resolve_path
from mcp_guard.paths import PathContext, Under, uri_forms
from mcp_guard.policy import Condition, Effect, Kind, Policy, PolicySet, Rule
from mcp_guard.policy._conditions import compile_condition

SECRET = "sécret"  # NFC: é is one code point
SECRET_NFD = unicodedata.normalize("NFD", SECRET)


def guard_for(root: str, deny_under: str) -> PolicySet:
    """The policy of the brief: allow fs/read_text_file; deny it when args.path is under the secret folder."""
    del root
    return policy_set({"id": "ws", "rules": [
        {"effect": "allow", "tools": ["fs/read_text_file"]},
        {"effect": "deny", "tools": ["fs/read_text_file"], "when": {"args.path": {"under": deny_under}},
         "reason": "The secret folder is off limits."},
    ]})


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for d in ("secret", SECRET, "allowed"):
        (root / d).mkdir(parents=True)
        (root / d / "s.txt").write_text("x")
    (root / "allowed" / "link").symlink_to(root / "secret")
    return root.resolve()


ESCAPES = ["secret/s.txt", "./secret/s.txt", "allowed/../secret/s.txt", "~/secret/s.txt", "secret", "secret/",
           ".//secret//s.txt", "allowed/./../secret/./s.txt"]


@pytest.mark.parametrize("value", ESCAPES)
@pytest.mark.parametrize("workdir", [True, False])
def test_relative_escapes_are_denied(ws: Path, value: str, workdir: bool) -> None:
    ps = guard_for(str(ws), f"{ws}/secret")
    ctx = PathContext(workdir=str(ws)) if workdir else None
    d = ps.decide(ALICE, "fs/read_text_file", {"path": value}, paths=ctx)
    assert d.effect is Effect.DENY, d
    assert d.rule_ids == ("ws#2",)  # the deny matched (judged or unjudgeable), not the default


@pytest.mark.parametrize("value", [f"{SECRET_NFD}/s.txt", f"./{SECRET_NFD}/s.txt", f"{SECRET}/s.txt"])
@pytest.mark.parametrize("deny", [SECRET, SECRET_NFD])
def test_the_nfd_spelling_of_a_denied_folder_is_denied(ws: Path, value: str, deny: str) -> None:
    ps = guard_for(str(ws), f"{ws}/{deny}")
    ctx = PathContext(workdir=str(ws))
    assert ps.decide(ALICE, "fs/read_text_file", {"path": value}, paths=ctx).effect is Effect.DENY
    assert ps.decide(ALICE, "fs/read_text_file", {"path": f"{ws}/{value}"}).effect is Effect.DENY


def test_allowed_paths_stay_allowed(ws: Path) -> None:
    ps = guard_for(str(ws), f"{ws}/secret")
    ctx = PathContext(workdir=str(ws))
    for value in ("allowed/s.txt", f"{ws}/allowed/s.txt", "secretary/x", f"{ws}/secret-old"):
        assert ps.decide(ALICE, "fs/read_text_file", {"path": value}, paths=ctx).allowed, value


def test_a_case_variant_of_a_denied_folder_is_denied_and_of_an_allowed_one_not_allowed(ws: Path) -> None:
    ps = guard_for(str(ws), f"{ws}/secret")
    assert ps.decide(ALICE, "fs/read_text_file", {"path": f"{ws}/SECRET/s.txt"}).effect is Effect.DENY
    assert ps.decide(ALICE, "fs/read_text_file", {"path": f"{ws}/Secret"}).effect is Effect.DENY
    allow = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"], "when": {"args.path": {"under": "/srv/tickets"}}}]})
    assert not allow.decide(ALICE, "fs/read", {"path": "/srv/Tickets/1"}).allowed


def test_symlinks_are_followed_with_resolve(ws: Path) -> None:
    ps = guard_for(str(ws), f"{ws}/secret")
    lexical = PathContext(workdir=str(ws))
    resolving = PathContext(workdir=str(ws), resolve=resolve_path)
    assert ps.decide(ALICE, "fs/read_text_file", {"path": "allowed/link/s.txt"}, paths=lexical).allowed  # lexical: cannot see it
    assert ps.decide(ALICE, "fs/read_text_file", {"path": "allowed/link/s.txt"}, paths=resolving).effect is Effect.DENY
    assert ps.decide(ALICE, "fs/read_text_file", {"path": "allowed/link/new.txt"}, paths=resolving).effect is Effect.DENY
    assert ps.decide(ALICE, "fs/read_text_file", {"path": "allowed/s.txt"}, paths=resolving).allowed
    # the link's own parent is not where .. leads once the link is followed: judged either way, denied
    assert ps.decide(ALICE, "fs/read_text_file", {"path": "allowed/link/../secret/s.txt"}, paths=resolving).effect is Effect.DENY
    # unresolvable (a missing directory followed by ..): the deny matches
    assert ps.decide(ALICE, "fs/read_text_file", {"path": "nope/../../x"}, paths=resolving).effect is Effect.DENY


@pytest.mark.parametrize("value", [42, True, None, ["/srv/secret/x"], {"p": "/srv/secret"}, "", "/srv/secret\\..\\x",
                                   "/srv/sec\x00ret", "relative", "https://x/srv/secret", "file://host/srv/secret"])
def test_an_unjudgeable_value_matches_the_deny_and_never_the_allow(value: Any) -> None:
    deny = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"]},
                                            {"effect": "deny", "tools": ["fs/read"], "when": {"args.path": {"under": "/srv/secret"}}}]})
    allow = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"], "when": {"args.path": {"under": "/"}}}]})
    assert deny.decide(ALICE, "fs/read", {"path": value}).effect is Effect.DENY
    assert not allow.decide(ALICE, "fs/read", {"path": value}).allowed


@pytest.mark.parametrize(("op", "operand", "value"), [
    ("equals", "rm", 1), ("in", ["rm"], ["rm"]), ("not_in", ["ls"], 7), ("glob", "*", 3), ("regex", ".*", None),
    ("max_length", 3, 12), ("min", 1, "5"), ("max", 1, True), ("equals", 5, "5"),
])
def test_the_wrong_type_is_unjudgeable_for_every_operator(op: str, operand: Any, value: Any) -> None:
    deny = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"]},
                                            {"effect": "deny", "tools": ["fs/read"], "when": {"args.x": {op: operand}}}]})
    allow = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"], "when": {"args.x": {op: operand}}}]})
    assert deny.decide(ALICE, "fs/read", {"x": value}).effect is Effect.DENY
    assert not allow.decide(ALICE, "fs/read", {"x": value}).allowed


def test_a_missing_argument_is_a_fact_not_an_unknown() -> None:
    # the documented contract: a condition on a missing argument is false, for allow and deny alike
    deny = policy_set({"id": "p", "rules": [{"effect": "allow", "tools": ["fs/read"]},
                                            {"effect": "deny", "tools": ["fs/read"], "when": {"args.recursive": {"equals": True}}}]})
    assert deny.decide(ALICE, "fs/read", {}).allowed
    assert deny.decide(ALICE, "fs/read", {"recursive": "yes"}).effect is Effect.DENY  # present, wrong type


def test_one_bad_element_of_a_list_is_enough_for_a_deny() -> None:
    ps = policy_set({"id": "p", "rules": [
        {"effect": "allow", "tools": ["fs/read_multiple_files"], "when": {"args.paths[*]": {"under": "/srv"}}},
        {"effect": "deny", "tools": ["fs/read_multiple_files"], "when": {"args.paths[*]": {"under": "/srv/secret"}}},
        {"effect": "allow", "tools": ["fs/copy"], "when": {"args.files[*].path": {"under": "/srv"}}},
        {"effect": "deny", "tools": ["fs/copy"], "when": {"args.files[*].path": {"under": "/srv/secret"}}},
    ]})
    def decide(tool: str, args: dict[str, Any]) -> Effect:
        return ps.decide(ALICE, tool, args).effect
    assert decide("fs/read_multiple_files", {"paths": ["/srv/a", "/srv/b"]}) is Effect.ALLOW
    assert decide("fs/read_multiple_files", {"paths": ["/srv/a", "/srv/secret/b"]}) is Effect.DENY
    assert decide("fs/read_multiple_files", {"paths": ["/srv/a", 5]}) is Effect.DENY
    assert decide("fs/read_multiple_files", {"paths": "/srv/secret/b"}) is Effect.DENY  # not a list: unjudgeable
    assert decide("fs/copy", {"files": [{"path": "/srv/a"}, {"path": "/srv/secret/x"}]}) is Effect.DENY
    assert decide("fs/copy", {"files": [{"name": "x"}, {"path": "/srv/secret/x"}]}) is Effect.DENY
    assert decide("fs/copy", {"files": [{"path": "/srv/a"}, "oops"]}) is Effect.DENY
    assert decide("fs/copy", {"files": [{"path": "/srv/a"}]}) is Effect.ALLOW


# --------------------------------------------------------------------------- resources

RES = policy_set({"id": "r", "rules": [
    {"effect": "allow", "resources": ["docs/*"]},
    {"effect": "deny", "resources": ["docs/*"], "when": {"uri": {"under": f"file:///srv/{SECRET}"}}},
    {"effect": "deny", "resources": ["*/*"], "when": {"uri": {"glob": "*private*"}}},
    {"effect": "deny", "resources": ["docs/file:///srv/locked/*"]},
]})


@pytest.mark.parametrize("uri", [
    f"file:///srv/{SECRET}/a", f"file:///srv/{SECRET_NFD}/a", "file:///srv/s%C3%A9cret/a", "file:///srv/se%CC%81cret/a",
    "file:///srv/s%c3%a9cret", f"file://localhost/srv/{SECRET}/a", f"FILE:///srv/{SECRET}", f"file:/srv/{SECRET}/a",
    f"file:///srv/x/../{SECRET}/a", f"file:///srv/x/%2E%2E/{SECRET}/a", f"file:///srv//{SECRET}/a",
    f"file:///srv/{SECRET.upper()}/a", f"file:///srv/{SECRET}%2Fa",  # case; an escaped / cannot be placed
    "file:///srv/pri%76ate/a", "file:///srv/PRIVATE/x".lower(), "file:///srv/p%72ivate",
    "file:///srv/locked/x", "file:///srv/open/../locked/x", "file:///srv/open%2F..%2Flocked/x", "file:///srv/%6Cocked/x",
    "file:///srv/\x00", "file:///srv/%zz", "file:///srv/%ff",  # control characters and broken escapes
])
def test_resource_uri_spellings_of_a_denied_place_are_denied(uri: str) -> None:
    d = RES.decide(ALICE, f"docs/{uri}", kind=Kind.RESOURCE)
    assert d.effect is Effect.DENY, d
    assert not RES.visible(ALICE, f"docs/{uri}", kind=Kind.RESOURCE)


@pytest.mark.parametrize("uri", ["file:///srv/open/a.md", "file:///srv/%C3%A9t%C3%A9/a", "file:///srv/secretary"])
def test_other_resources_stay_allowed(uri: str) -> None:
    assert RES.decide(ALICE, f"docs/{uri}", kind=Kind.RESOURCE).allowed
    assert RES.visible(ALICE, f"docs/{uri}", kind=Kind.RESOURCE)


def test_under_cannot_judge_another_scheme_so_its_deny_matches() -> None:
    assert RES.decide(ALICE, "docs/mem://notes/1", kind=Kind.RESOURCE).rule_ids == ("r#2",)
    # select file URIs in the deny when other schemes should not be caught by it
    scoped = policy_set({"id": "r", "rules": [
        {"effect": "allow", "resources": ["docs/*"]},
        {"effect": "deny", "resources": ["docs/file:*"], "when": {"uri": {"under": f"file:///srv/{SECRET}"}}}]})
    assert scoped.decide(ALICE, "docs/mem://notes/1", kind=Kind.RESOURCE).allowed
    assert scoped.decide(ALICE, f"docs/file:///srv/{SECRET_NFD}/x", kind=Kind.RESOURCE).effect is Effect.DENY
    assert scoped.decide(ALICE, f"docs/FILE:///srv/{SECRET}/x", kind=Kind.RESOURCE).effect is Effect.DENY


# --------------------------------------------------------------------------- properties

NAME_CHARS = st.sampled_from(["a", "b", "é", "e\u0301", "Å", "A\u030a", "ß", "x", "-", ".", " ", "%", "ñ", "n\u0303"])
NAMES = st.lists(NAME_CHARS, min_size=1, max_size=6).map("".join).filter(lambda s: s not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(NAMES, st.lists(NAMES, max_size=3), st.sampled_from(["NFC", "NFD"]), st.sampled_from(["NFC", "NFD"]))
def test_nfc_and_nfd_spellings_are_one_folder(root: str, rest: list[str], root_form: str, value_form: str) -> None:
    ps = guard_for("/ws", unicodedata.normalize(root_form, f"/ws/{root}"))
    value = unicodedata.normalize(value_form, "/".join(["/ws", root, *rest]))
    assert ps.decide(ALICE, "fs/read_text_file", {"path": value}).effect is Effect.DENY


@settings(max_examples=300, deadline=None)
@given(NAMES, st.lists(NAMES, max_size=3), st.randoms(use_true_random=False))
def test_a_case_variant_is_never_judged_not_under(root: str, rest: list[str], rnd: Any) -> None:
    flipped = "".join(c.swapcase() if rnd.random() < 0.5 else c for c in "/".join([root, *rest]))
    assert Under(f"/ws/{root}").judge(f"/ws/{flipped}") is not False


@settings(max_examples=300, deadline=None)
@given(NAMES, st.lists(NAMES, max_size=3), st.randoms(use_true_random=False))
def test_percent_encoding_a_file_uri_never_leaves_the_deny(root: str, rest: list[str], rnd: Any) -> None:
    path = "/".join(["/srv", root, *rest])
    encoded = "".join("".join(f"%{b:02X}" for b in c.encode()) if rnd.random() < 0.5 and c != "/" else c for c in path)
    ps = policy_set({"id": "r", "rules": [{"effect": "allow", "resources": ["docs/*"]},
                                          {"effect": "deny", "resources": ["docs/*"], "when": {"uri": {"under": "file://" + quote(f"/srv/{root}")}}}]})
    assert ps.decide(ALICE, f"docs/file://{encoded}", kind=Kind.RESOURCE).effect is Effect.DENY


RELATIVE = st.lists(st.sampled_from(["a", "b", ".", "..", "", "é", "e\u0301"]), min_size=1, max_size=6).map("/".join)
ROOTS = st.sampled_from(["/w", "/w/a", "/w/a/b", "/", "/x", "/w/é"])


@settings(max_examples=400, deadline=None)
@given(RELATIVE, ROOTS)
def test_a_relative_path_with_a_workdir_is_judged_as_its_absolute_path(value: str, root: str) -> None:
    assume(value and not value.startswith("/"))
    under = Under(root)
    assert under.judge(value, PathContext(workdir="/w")) == under.judge("/w/" + value)


CONDITION_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.floats(-2, 2, allow_nan=False),
    st.sampled_from(["", "a", "/srv/a", "srv/a", "~/a", "/srv/../etc", "file:///srv/a", "http://x/srv", "/SRV/A", "\x00"]),
    st.lists(st.sampled_from(["/srv/a", "a", 1]), max_size=3), st.dictionaries(st.sampled_from(["path"]), st.sampled_from(["/srv/a", 1]), max_size=1),
)
OPS = st.sampled_from([("under", "/srv"), ("under", "srv"), ("glob", "/srv/*"), ("regex", "/srv/.*"), ("equals", "/srv/a"),
                       ("equals", 1), ("in", ("a", "b")), ("in", (1, 2)), ("not_in", ("a",)), ("not_in", (1,)),
                       ("max_length", 3), ("min", 0), ("max", 1), ("present", True)])
KEYS = st.sampled_from(["args.x", "args.x[*]", "args.x[*].path"])


@settings(max_examples=500, deadline=None)
@given(KEYS, st.lists(OPS, min_size=1, max_size=2, unique_by=lambda o: o[0]), CONDITION_VALUES, st.booleans())
def test_unjudgeable_never_allows_and_always_denies(key: str, ops: list[tuple[str, Any]], value: Any, with_workdir: bool) -> None:
    cond = Condition(key, tuple(ops))
    args = {"x": value}
    ctx = PathContext(workdir="/w") if with_workdir else None
    every = compile_condition(cond).test(args, ALICE, ctx)
    some = compile_condition(cond, existential=True).test(args, ALICE, ctx)
    allow = PolicySet([Policy("p", (Rule(Effect.ALLOW, ("fs/read",), (cond,)),))])
    deny = PolicySet([Policy("p", (Rule(Effect.ALLOW, ("fs/read",)), Rule(Effect.DENY, ("fs/read",), (cond,))))])
    approve = PolicySet([Policy("p", (Rule(Effect.ALLOW, ("fs/read",)), Rule(Effect.APPROVE, ("fs/read",), (cond,))))])
    assert allow.decide(ALICE, "fs/read", args, paths=ctx).allowed is (every is True)
    assert (deny.decide(ALICE, "fs/read", args, paths=ctx).effect is Effect.DENY) is (some is not False)
    assert (approve.decide(ALICE, "fs/read", args, paths=ctx).effect is Effect.APPROVE) is (some is not False)
    # the existential reading is never less severe than the universal one
    assert not (every is True and some is False)
    if every is None:
        assert some is not False


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(["a", "/", ".", "%", "2", "F", "e", "é", ":", "?", "#", "\x00", "~"]), max_size=12))
def test_uri_readings_are_stable(tail: str) -> None:
    forms = uri_forms("file:///" + tail)
    if forms is None:
        return
    assert forms[0] == unicodedata.normalize("NFC", forms[0])
    again = uri_forms(forms[0])
    assert again is not None and again[0] == forms[0]  # the canonical form is a fixed point


@pytest.mark.parametrize("operand", ["file:///srv/s%C3%A9cret/a", f"file:///srv/{SECRET_NFD}/a", "FILE:///srv/x/../sécret/a"])
@pytest.mark.parametrize("op", ["equals", "in", "glob"])
def test_uri_operands_are_judged_in_the_same_canonical_form(operand: str, op: str) -> None:
    value: Any = [operand] if op == "in" else operand
    ps = policy_set({"id": "r", "rules": [{"effect": "allow", "resources": ["docs/*"]},
                                          {"effect": "deny", "resources": ["docs/*"], "when": {"uri": {op: value}}}]})
    for uri in (f"file:///srv/{SECRET}/a", "file:///srv/s%c3%a9cret/a", f"file:///srv/{SECRET_NFD}/a"):
        assert ps.decide(ALICE, f"docs/{uri}", kind=Kind.RESOURCE).effect is Effect.DENY, uri


def test_a_link_inside_an_nfd_named_folder_is_followed(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    (root / "secret").mkdir()
    (root / SECRET_NFD).mkdir()  # only the NFD spelling exists on disk (as macOS writes names)
    (root / SECRET_NFD / "link").symlink_to(root / "secret")
    ps = guard_for(str(root), f"{root}/secret")
    ctx = PathContext(workdir=str(root), resolve=resolve_path)
    assert ps.decide(ALICE, "fs/read_text_file", {"path": f"{SECRET_NFD}/link/s.txt"}, paths=ctx).effect is Effect.DENY
    assert ps.decide(ALICE, "fs/read_text_file", {"path": f"{SECRET_NFD}/other.txt"}, paths=ctx).allowed
