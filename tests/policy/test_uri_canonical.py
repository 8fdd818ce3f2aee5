"""Resource URIs are judged in one canonical form per scheme and over every other reading a
server might take (most severe wins), so no spelling of a denied URI slips past its selector."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ALICE, policy_set
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mcp_guard.decision import Kind
from mcp_guard.paths import canonical_uri, uri_forms
from mcp_guard.policy import Effect
from mcp_guard.policy._match import glob_regex, globs_meet

DENY_SECRETS = policy_set({"id": "r", "rules": [
    {"effect": "allow", "resources": ["rec/*"]},
    {"effect": "deny", "resources": ["rec/file:///srv/secret/*", "rec/https://example.com/secret/*"]},
]})

FILE_SPELLINGS = [
    "file://localhost/srv/secret/s.txt", "file:/srv/secret/s.txt", "file:////srv/secret/s.txt",
    "file:///srv//secret/s.txt", "FILE://LocalHost/srv/secret/s.txt", "file:///srv/%73ecret/s.txt",
    "file:///srv/./open/../secret/s.txt", "file:///srv\\secret\\s.txt", "file://localhost//srv///secret/s.txt",
    "file:///srv/secret/s.txt",
]
HTTPS_SPELLINGS = [
    "https://EXAMPLE.COM/secret/a", "HTTPS://example.com/secret/a", "https://example.com:443/secret/a",
    "https://example.com:0443/secret/a", "https://example.com:/secret/a", "https://%65xample.com/secret/a",
    "https://%45XAMPLE.com/secret/a", "https://example.com\\secret\\a", "https://example.com/secret\\a",
    "https://example.com.//secret/a", "https://example.com//secret/a", "https://user@example.com/secret/a",
    "https://example.com/open/../secret/a", "https://example.com/%73ecret/a", "https://example.com/secret/a",
]


@pytest.mark.parametrize("uri", FILE_SPELLINGS + HTTPS_SPELLINGS)
def test_every_spelling_of_a_denied_uri_is_denied_and_hidden(uri: str) -> None:
    assert DENY_SECRETS.decide(ALICE, f"rec/{uri}", kind=Kind.RESOURCE).effect is Effect.DENY, uri
    assert not DENY_SECRETS.visible(ALICE, f"rec/{uri}", kind=Kind.RESOURCE)


@pytest.mark.parametrize("uri", [
    "file:///srv/open/s.txt", "file://localhost/srv/open/s.txt", "file:/srv/secretary/s.txt",
    "https://example.com/open/a", "https://EXAMPLE.com:443/open/a", "https://example.com:8443/secret/a",
    "http://example.com/secret/a", "https://example.org/secret/a", "https://example.com/secrets/a",
])
def test_other_uris_stay_allowed(uri: str) -> None:
    assert DENY_SECRETS.decide(ALICE, f"rec/{uri}", kind=Kind.RESOURCE).allowed, uri


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("file://localhost/x", "file:///x"), ("file:/x", "file:///x"), ("file:////x", "file:///x"),
    ("file:///a//b", "file:///a/b"), ("File://LOCALHOST/x", "file:///x"), ("file://Server/x", "file://server/x"),
    ("HTTPS://Example.COM:443/a", "https://example.com/a"), ("http://example.com:80/a", "http://example.com/a"),
    ("https://example.com:8443/a", "https://example.com:8443/a"), ("https://example.com", "https://example.com/"),
    ("wss://example.com:443/a", "wss://example.com/a"), ("https://ex%41mple.com/%7Euser", "https://example.com/~user"),
    ("https://exämple.com/", "https://xn--exmple-cua.com/"), ("https://[::1]:443/a", "https://[::1]/a"),
    ("https://example.com./a", "https://example.com/a"), ("note://shared", "note://shared"),
    ("rec/https://*.example.com/*", "rec/https://*.example.com/*"),
])
def test_the_canonical_form(spelling: str, canonical: str) -> None:
    assert canonical_uri(spelling) == canonical


def test_selectors_are_canonical_too() -> None:
    ps = policy_set({"id": "r", "rules": [
        {"effect": "allow", "resources": ["rec/*"]},
        {"effect": "deny", "resources": ["rec/file://localhost/srv/secret/*", "rec/HTTPS://Example.com:443/secret/*"]}]})
    for uri in ("file:///srv/secret/a", "https://example.com/secret/a"):
        assert ps.decide(ALICE, f"rec/{uri}", kind=Kind.RESOURCE).effect is Effect.DENY


def test_approve_is_judged_over_every_reading() -> None:
    ps = policy_set({"id": "r", "rules": [
        {"effect": "allow", "resources": ["rec/*"]},
        {"effect": "approve", "resources": ["rec/https://example.com/secret/*"]}]})
    for uri in ("https://example.com//secret/a", "https://u@example.com/secret/a", "https://EXAMPLE.com:443/secret/a"):
        assert ps.decide(ALICE, f"rec/{uri}", kind=Kind.RESOURCE).effect is Effect.APPROVE, uri


@pytest.mark.parametrize("uri", [
    "https://exa%2Fmple.com/a", "https://exa%40mple.com/a", "https://exa%zzmple.com/a", "https://[::1/a",
    "https://xn--a.com\u0000/a", "https://ex%ffample.com/a",
])
def test_a_host_that_cannot_be_read_is_unjudgeable(uri: str) -> None:
    assert uri_forms(uri) is None
    assert DENY_SECRETS.decide(ALICE, f"rec/{uri}", kind=Kind.RESOURCE).effect is Effect.DENY


HOSTS = st.sampled_from(["example.com", "EXAMPLE.com", "%65xample.com", "example.com.", "Ex%41mple.COM"])
PORTS = st.sampled_from(["", ":", ":443", ":0443"])
SEPS = st.sampled_from(["/", "//", "\\", "/./", "/x/../"])


@settings(max_examples=300, deadline=None)
@given(HOSTS, PORTS, SEPS, SEPS, st.sampled_from(["", "user@"]))
def test_no_respelling_leaves_the_deny(host: str, port: str, sep1: str, sep2: str, user: str) -> None:
    uri = f"https://{user}{host}{port}{sep1}secret{sep2}a"
    assert DENY_SECRETS.decide(ALICE, f"rec/{uri}", kind=Kind.RESOURCE).effect is Effect.DENY, uri


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["file:", "FILE:", "file://", "file://localhost", "file://LOCALHOST", "file:///"]),
       st.lists(st.sampled_from(["/", "//", "/./", "\\"]), min_size=3, max_size=3))
def test_no_file_respelling_leaves_the_deny(head: str, seps: list[str]) -> None:
    assume(not (head.lower() == "file:" and seps[0] == "//"))  # file://srv/... names the host srv
    uri = f"{head}{seps[0]}srv{seps[1]}secret{seps[2]}s.txt"
    assert DENY_SECRETS.decide(ALICE, f"rec/{uri}", kind=Kind.RESOURCE).effect is Effect.DENY, uri


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab/%.:@\\C3A9é", max_size=20))
def test_canonical_is_a_fixed_point(tail: Any) -> None:
    forms = uri_forms("https://Example.com:443/" + tail)
    if forms is None:
        return
    again = uri_forms(forms[0])
    assert again is not None and again[0] == forms[0]


# --------------------------------------------------------------------------- resource templates

TEMPLATES = policy_set({"id": "t", "rules": [
    {"effect": "allow", "resources": ["rec/file:///srv/*"]},
    {"effect": "allow", "resources": ["rec/*"], "when": {"uri": {"equals": "note://one"}}},
    {"effect": "deny", "resources": ["rec/file:///srv/secret/*"]},
]})


@pytest.mark.parametrize(("template", "shown"), [
    ("file:///srv/{path}", True), ("file:///{path}", True), ("file://localhost/srv/docs/{name}", True),
    ("file:///etc/{name}", False), ("https://example.com/{x}", False), ("note://{id}", True), ("vault://{id}", False),
    ("file:///srv/secret/{name}", False), ("file:///srv/secret{name}", True),
])
def test_a_template_is_listed_only_when_an_allow_rule_can_match_one_of_its_expansions(template: str, shown: bool) -> None:
    assert TEMPLATES.visible(ALICE, f"rec/{template}", kind=Kind.RESOURCE, judge_uri=False) is shown


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab*?", max_size=6), st.text(alphabet="ab*?", max_size=6), st.text(alphabet="ab", max_size=6))
def test_globs_meet_whenever_a_text_matches_both(a: str, b: str, text: str) -> None:
    if glob_regex(a).fullmatch(text) and glob_regex(b).fullmatch(text):
        assert globs_meet(a, b)
    if "*" not in a + b and "?" not in a + b:
        assert globs_meet(a, b) is (a == b)
