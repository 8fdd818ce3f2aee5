"""The fast paths of ``carries`` (the C screen that picks the runs to decode, the ASCII shortcut of
normalising, the printable count, the winnowed search with its per-value caches) agree with the
straightforward implementation in ``reference.py`` on generated text: decodings, normal forms and
verdicts are the same."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcp_guard.flow import ContentIndex, decoded, normalise
from mcp_guard.flow.text import _printable

from . import reference

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ANY = st.characters(codec="utf-8", exclude_categories=("Cs",))
B64ISH = st.text(st.sampled_from("AaBbZz019+/_-= %.\n\tx"), max_size=40)
SECRET = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)


@st.composite
def encoded(draw: st.DrawFn) -> str:
    """Text that mixes words, numbers, stray alphabet characters and encoded runs of other text."""
    secret = draw(SECRET).encode()
    kind = draw(st.sampled_from(["base64", "urlsafe", "hex", "HEX", "percent", "plain", "nested"]))
    hidden = {
        "base64": base64.b64encode(secret).decode(),
        "urlsafe": base64.urlsafe_b64encode(secret).decode().rstrip("="),
        "hex": binascii.hexlify(secret).decode(),
        "HEX": binascii.hexlify(secret).decode().upper(),
        "percent": quote(secret, safe=""),
        "plain": secret.decode(),
        "nested": base64.b64encode(binascii.hexlify(secret)).decode(),
    }[kind]
    parts = draw(st.lists(st.one_of(st.just(hidden), B64ISH, st.text(ANY, max_size=12),
                                     st.sampled_from(["Hello", "world", "Deadbeef", "cafebabe00", "2024", "x" * 9,
                                                      "YWFhYWFh", "Zm9vYmFy", "cabbcabbcabbcabb"])),
                          max_size=8))
    seps = draw(st.lists(st.sampled_from(["", " ", "=", ":", "\n", "é", "%", "0"]), min_size=len(parts), max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps, strict=True))


@SETTINGS
@given(encoded())
@example("see YWFhYWFh and Zm9vYmFy=, cabbcabbcabbcabb")  # letters only: base64 of "aaaaaa", hex of "ʻʻʻʻ"
def test_decodings_match_the_reference(text: str) -> None:
    assert list(decoded(text)) == list(reference.decoded(text))


@SETTINGS
@given(st.text(st.sampled_from("0123456789abcdefABCDEFxyz+/=_- \n"), min_size=200, max_size=2000))
def test_decodings_of_dense_runs_match_the_reference(text: str) -> None:
    """Many short runs (past the few-marks shortcut) and long ones."""
    assert list(decoded(text)) == list(reference.decoded(text))


@SETTINGS
@given(st.one_of(st.text(ANY), st.text(st.sampled_from(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2003aB.~"))))
def test_normal_forms_match_the_reference(text: str) -> None:
    assert normalise(text) == reference.normalise(text)


@SETTINGS
@given(st.binary(max_size=64))
def test_printable_matches_the_reference(raw: bytes) -> None:
    assert _printable(raw) == reference.printable(raw)


WORDS = st.sampled_from(["pay", "mallory", "the", "invoice", "bob@corp.example", "iban", "DE89 3704", "ÉTÉ", "ﬁle", "\t"])
CONTENT = st.lists(WORDS, max_size=40).map(" ".join).filter(lambda t: len(t) <= 250)


@st.composite
def argument(draw: st.DrawFn, content: str) -> str:
    """A piece of the content (often), maybe encoded, between other words."""
    norm = reference.normalise(content)
    piece = ""
    if norm and draw(st.booleans()):
        start = draw(st.integers(0, len(norm) - 1))
        piece = norm[start:start + draw(st.integers(1, 40))]
    how = draw(st.sampled_from(["as is", "base64", "hex", "percent", "upper"]))
    piece = {"as is": piece, "base64": base64.b64encode(piece.encode()).decode(), "hex": piece.encode().hex(),
             "percent": quote(piece, safe=""), "upper": piece.upper()}[how]
    return draw(st.lists(WORDS, max_size=3).map(" ".join)) + piece + draw(st.sampled_from(["", " x", "!"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CONTENT, min_size=1, max_size=3), st.data(), st.booleans(), st.lists(WORDS, max_size=2))
def test_verdicts_match_the_brute_force_reference(contents: list[str], data: st.DataObject, token: bool,
                                                   endorse: list[str]) -> None:
    idx = ContentIndex()
    for text in contents:
        idx.add({"untrusted"}, text)
    args = [data.draw(argument(c)) for c in contents]
    mask = frozenset(n for n in (normalise(e) for e in endorse) if n)
    for arg in args:
        for _ in range(2):  # the second time from the per-value caches
            got = idx.carries([arg], ["untrusted"], token=token, endorsed=mask, endorsed_for=frozenset({"untrusted"}))
            want = reference.carries({"untrusted": contents}, [arg], ["untrusted"], token=token, endorsed=mask,
                                     endorsed_for=frozenset({"untrusted"}))
            assert got == want, (arg, contents)
