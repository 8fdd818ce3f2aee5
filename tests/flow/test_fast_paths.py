"""The fast paths of ``carries`` (the C screen that picks the runs to decode, the shortcut for an
argument that is one whole base64 run, the ASCII shortcut of normalising, the printable count, the
winnowed search with its per-value caches) agree with the
straightforward implementation in ``reference.py`` on generated text: decodings, normal forms and
verdicts are the same."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcp_guard.flow import ContentIndex, decoded, normalise
from mcp_guard.flow.text import _printable, forms

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
@example("Zm9vYmFyYmF6 and Hello")  # an upper-case letter that starts the text is no mark; later ones are
@example("Hello Worldwide Bookkeeping")  # upper-case letters that start a stretch only: no run
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


@st.composite
def whole_base64(draw: st.DrawFn) -> str:
    """An argument that is (almost) one base64 run: either alphabet, padded, stripped or over-padded,
    broken into lines, with stray characters where a strict decoder must refuse the shortcut."""
    secret = draw(st.one_of(SECRET, st.binary(max_size=40).map(lambda b: b.decode("latin-1")))).encode()
    text = draw(st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]))(secret).decode()
    how = draw(st.sampled_from(["as is", "no padding", "extra padding", "lines", "mixed alphabets", "inner =",
                                "stray", "lower", "prefix"]))
    if how == "no padding":
        text = text.rstrip("=")
    elif how == "extra padding":
        text += "=" * draw(st.integers(1, 3))
    elif how == "lines":
        width = draw(st.sampled_from([4, 8, 76]))
        text = draw(st.sampled_from(["\n", "\r\n", " "])).join(text[i:i + width] for i in range(0, len(text), width))
    elif how == "mixed alphabets":
        text = text.replace("A", "-").replace("B", "/")
    elif how == "inner =":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + "=" + text[at:]
    elif how == "stray":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["é", "%", ".", "\t", "~"])) + text[at:]
    elif how == "lower":
        text = text.lower()
    elif how == "prefix":
        text = draw(st.sampled_from(["data:", "key=", "x "])) + text
    return text


@SETTINGS
@given(whole_base64())
@example("aGVsbG8gd29ybGQ=")  # one run, padded
@example("aGVsbG8gd29ybGQ")  # one run, padding stripped
@example("aGVsbG8gd29ybGQ===")  # over-padded: the run ends before the third "="
@example("helloworld")  # a plain word decodes (to bytes) but is never read as base64
@example("aGVsbG8=gd29ybGQ")  # an inner "="
@example("aGVsbG8g\nd29ybGQ=")  # two runs on two lines
def test_a_whole_base64_argument_matches_the_reference(text: str) -> None:
    assert list(decoded(text)) == list(reference.decoded(text))
    assert forms(text) == tuple(dict.fromkeys(f for f in (reference.normalise(t) for t in [text, *reference.decoded(text)]) if f))


@SETTINGS
@given(st.lists(CONTENT, min_size=1, max_size=2), st.data(), st.sampled_from(["whole", "embedded", "lines"]))
def test_base64_verdicts_match_the_reference(contents: list[str], data: st.DataObject, where: str) -> None:
    """A piece of the content hidden in base64 as the whole argument, inside other text, or in lines."""
    norm = reference.normalise(" ".join(contents))
    start = data.draw(st.integers(0, max(0, len(norm) - 1)))
    piece = norm[start:start + data.draw(st.integers(1, 60))] + data.draw(st.sampled_from(["", " and more words here"]))
    hidden = data.draw(st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]))(piece.encode()).decode()
    arg = {"whole": hidden, "embedded": f"see {hidden}, thanks", "lines": "\n".join(hidden[i:i + 8] for i in range(0, len(hidden), 8))}[where]
    idx = ContentIndex()
    for text in contents:
        idx.add({"untrusted"}, text)
    assert idx.carries([arg], ["untrusted"]) == reference.carries({"untrusted": contents}, [arg], ["untrusted"]), arg


LONG_WORDS = st.one_of(
    st.binary(min_size=18, max_size=60).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=12, max_size=40).map(bytes.hex),
    st.text(st.sampled_from("abcxyz019/.-_:?=&"), min_size=20, max_size=60).map(lambda t: "https://" + t))
SPACE_FREE_CONTENT = st.lists(st.one_of(WORDS, LONG_WORDS), min_size=1, max_size=12).map(" ".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(CONTENT, SPACE_FREE_CONTENT), min_size=1, max_size=3), st.data())
def test_space_free_arguments_match_the_reference(contents: list[str], data: st.DataObject) -> None:
    """Content with and without space-free stretches of 24+ characters (URLs, ids, encoded blobs):
    an argument without a space (a piece of the content as is, upper-cased or encoded) is searched
    only where the content holds such a stretch, and the verdict is the reference's."""
    norm = reference.normalise(" ".join(contents))
    start = data.draw(st.integers(0, max(0, len(norm) - 1)))
    piece = norm[start:start + data.draw(st.integers(1, 80))].replace(" ", data.draw(st.sampled_from(["", "/", "-"])))
    how = data.draw(st.sampled_from(["as is", "upper", "base64", "hex", "percent", "padded"]))
    arg = {"as is": piece, "upper": piece.upper(), "base64": base64.b64encode(piece.encode()).decode(),
           "hex": piece.encode().hex(), "percent": quote(piece, safe=""), "padded": f"x{piece}y" * 2}[how]
    idx = ContentIndex()
    for text in contents:
        idx.add({"untrusted"}, text)
    for _ in range(2):  # the second time from the per-value caches
        assert idx.carries([arg], ["untrusted"]) == reference.carries({"untrusted": contents}, [arg], ["untrusted"]), arg


def test_a_space_free_argument_finds_a_long_word_of_the_content() -> None:
    blob = base64.b64encode(b"the quarterly figures, confidential").decode()
    idx = ContentIndex()
    idx.add({"untrusted"}, "pay the invoice now")
    assert not idx.carries([f"ref{blob}"], ["untrusted"])  # the content has no space-free stretch of 24
    idx.add({"untrusted"}, f"the attachment reads {blob} end")
    assert idx.carries([f"ref{blob}"], ["untrusted"])
    assert idx.carries([base64.b64encode(f"ref{blob}".encode()).decode()], ["untrusted"])  # and hidden once more
