"""Text as ``carries`` compares it: normalised, and decoded where an argument hides an encoding.

Normalisation (NFKC, case folding, whitespace runs collapsed to one space) makes look-alike forms
of the same text compare equal.  An argument is also read after decoding every base64, hex and
percent-encoded run inside it, so ``aGVsbG8gd29ybGQ=`` carries what ``hello world`` carries.

Pure and cheap: the runs worth decoding are found by a screen that runs in C (``bytes.translate``
to character classes, then substring searches), so ordinary prose is never scanned by a regular
expression; only the runs that pass it are.  An argument that is one whole base64 run skips the
base64 screen: the strict decoder (``pybase64``, SIMD C) proves it.  Which runs are decoded is
exactly what the plain definitions say (base64: 8+ characters of either alphabet, not a plain
word; hex: 8+ hex digits).
"""

from __future__ import annotations

import binascii
import functools
import re
import string
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

# base64 (standard or URL-safe alphabet) with optional padding; runs of 8+ characters are decoded.
# A plain word (lower-case or capitalised letters only) is not read as base64.
_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")
_TOKEN = re.compile(r"\w+")
_DEPTH = 2  # encodings inside encodings, read this deep
_MIN_RUN = 8  # base64 and hex runs shorter than this are not read


def _table(classes: dict[str, str]) -> bytes:
    """A ``bytes.translate`` table: each listed byte to its class letter, every other byte to a space."""
    out = bytearray(b" " * 256)
    for chars, cls in classes.items():
        for ch in chars.encode():
            out[ch] = ord(cls)
    return bytes(out)


# base64 alphabet as classes: lower-case letters, upper-case letters, the rest (digits, + / _ - and
# the padding =).  A run that is not a plain word holds a "d" or an upper-case letter after its first.
_B64_CLASSES = _table({string.ascii_lowercase: "l", string.ascii_uppercase: "U", string.digits + "+/_-=": "d"})
_HEX_CLASSES = _table({string.hexdigits: "h"})
_HEX_RUN = b"h" * _MIN_RUN
_PRINTABLE_LINE = bytes(range(0x20, 0x7F))  # what ``str.isprintable`` accepts in ASCII
_PRINTABLE_ASCII = _PRINTABLE_LINE + b"\n\r\t"
_FEW_MARKS = 64  # past this many, one regular-expression pass over the whole text is cheaper


def normalise(text: str, *, clean: bool = False) -> str:
    """NFKC, case folded, whitespace runs as one space: the form every comparison uses.

    ``clean``: the caller knows ``text`` is printable ASCII (``\x20``-``\x7e``), so its check is skipped."""
    if clean or text.isascii():
        folded = text.lower()  # casefold and NFKC are the identity on ASCII apart from case
        if (clean or not folded.encode("ascii").translate(None, _PRINTABLE_LINE)) and "  " not in folded:
            return folded.strip(" ")  # printable ASCII: the only whitespace is single spaces
    else:
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def _shown(raw: bytes) -> tuple[str, bool] | None:
    """Decoded bytes as text when they are UTF-8 and at least half printable (else it was no
    encoding), and whether that text is all printable ASCII (then ``normalise`` need not check)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    if raw.isascii():
        rest = raw.translate(None, _PRINTABLE_LINE)  # one pass in C
        if not rest:
            return text, True
        hidden = len(rest) - rest.count(b"\n") - rest.count(b"\r") - rest.count(b"\t")
        return (text, False) if hidden * 2 <= len(text) else None
    shown = sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t")
    return (text, False) if shown * 2 >= len(text) else None


def _printable(raw: bytes) -> str | None:
    """Decoded bytes as text when they are UTF-8 and at least half printable (else it was no encoding)."""
    got = _shown(raw)
    return None if got is None else got[0]


@functools.cache
def _decoder() -> Callable[..., bytes]:
    """``pybase64.b64decode``, imported on the first base64 run rather than at start-up."""
    import pybase64

    decode: Callable[..., bytes] = pybase64.b64decode
    return decode


def _b64_bytes(run: str) -> bytes | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:  # strict: only the alphabet and correct padding (SIMD C: a tenth of ``binascii``'s time on 4 KiB)
        return _decoder()(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _one_run(text: str) -> bytes | None:
    """The bytes ``text`` decodes to when the whole of it is one base64 run (``_RUN`` finds exactly
    ``text``, no plain word), else None.  The common case of an encoded argument: its screens, the
    regular expression and the printable check of ``text`` itself are then skipped.  The strict
    decoder proves the alphabet (any other character, an inner ``=`` or a line break is an error)."""
    if " " in text or len(text) < _MIN_RUN or text.endswith("===") or _plain_word(text):
        return None
    raw = _b64_bytes(text)
    return raw if raw is not None and len(text.rstrip("=")) >= _MIN_RUN else None


def _hex_runs(text: str, ascii_text: bytes) -> Iterator[str]:
    """Every run of 8+ hex digits, cut to an even length (as ``(?:[0-9A-Fa-f]{2}){4,}`` finds them)."""
    classes = ascii_text.translate(_HEX_CLASSES)
    pos = classes.find(_HEX_RUN)
    while pos >= 0:  # the leftmost 8 hex digits from a run's start: the run's start
        end = classes.find(b" ", pos)
        end = len(classes) if end < 0 else end
        yield text[pos:end - (end - pos) % 2]
        pos = classes.find(_HEX_RUN, end)


def _plain_word(run: str) -> bool:
    return run.isalpha() and (run.islower() or run.istitle())  # base64 of text practically never is one


def _b64_runs(text: str, ascii_text: bytes) -> list[str]:
    """Every run ``_RUN`` finds that is not a plain word.  The regular expression runs only over the
    stretches (of the alphabet and ``=``) that can hold one: those with a digit, one of ``+/_-=`` or
    an upper-case letter after their first character ("marks")."""
    classes = ascii_text.translate(_B64_CLASSES)
    digits = classes.count(b"d")
    # upper-case letters that start a stretch are no mark: replaced only when some other one is
    upper = classes.count(b"U") - classes.count(b" U") - classes.startswith(b"U")
    count = digits + upper
    if not count:
        return []
    if count > _FEW_MARKS:
        return [run for run in _RUN.findall(text) if not _plain_word(run)]
    marks = (b"l" + classes[1:] if classes.startswith(b"U") else classes).replace(b" U", b" l") if upper else classes
    out: list[str] = []
    pos, d, u = 0, marks.find(b"d"), marks.find(b"U") if upper else -1
    while d >= 0 or u >= 0:
        mark = d if u < 0 or 0 <= d < u else u
        start = marks.rfind(b" ", 0, mark) + 1
        end = marks.find(b" ", mark)
        pos = len(marks) if end < 0 else end
        if pos - start >= _MIN_RUN:
            out.extend(run for run in _RUN.findall(text, start, pos) if not _plain_word(run))
        if 0 <= d < pos:
            d = marks.find(b"d", pos)
        if 0 <= u < pos:
            u = marks.find(b"U", pos)
    return out


def _decodings(text: str, depth: int, out: list[tuple[str, bool]]) -> bool:
    """Append every decoding inside ``text`` (base64, hex, percent), recursively, each with whether
    it is all printable ASCII; return whether ``text`` itself is one whole base64 run."""
    if depth <= 0 or len(text) < 6:
        return False
    found: list[tuple[str, bool]] = []
    if "%" in text and _PCT.search(text):
        plain = unquote(text, errors="replace")  # never raises: bad bytes read as U+FFFD
        if plain != text:
            found.append((plain, False))
    ascii_text = text.encode("ascii", "replace")  # one byte per character: positions agree
    for run in _hex_runs(text, ascii_text):
        got = _shown(bytes.fromhex(run))
        if got is not None:
            found.append(got)
    whole = _one_run(text)
    if whole is not None:
        got = _shown(whole)
        if got is not None:
            found.append(got)
    else:
        for run in _b64_runs(text, ascii_text):
            raw = _b64_bytes(run)
            if raw is not None and (got := _shown(raw)) is not None:
                found.append(got)
    for item in found:
        out.append(item)
        _decodings(item[0], depth - 1, out)
    return whole is not None


def decoded(text: str, depth: int = _DEPTH) -> Iterator[str]:
    """Every decoding of an encoded run inside ``text`` (base64, hex, percent), recursively."""
    out: list[tuple[str, bool]] = []
    _decodings(text, depth, out)
    return (item for item, _clean in out)


def forms(raw: str) -> tuple[str, ...]:
    """``raw`` and every decoding inside it, normalised, without repeats or empty forms."""
    out: list[tuple[str, bool]] = []
    whole = _decodings(raw, _DEPTH, out)  # a whole base64 run: printable ASCII, no space, so its lower case is its normal form
    found: list[str] = []
    for form in (raw.lower() if whole else normalise(raw), *(normalise(t, clean=c) for t, c in out)):
        if form and form not in found:  # a few forms: compared, not hashed
            found.append(form)
    return tuple(found)


def tokens(normalised: str) -> set[str]:
    """The identifier-like tokens of normalised text: word runs and whitespace-separated words
    without their surrounding punctuation (``jane@example.com,`` -> ``jane@example.com``)."""
    out = set(_TOKEN.findall(normalised))
    out.update(w.strip(".,;:!?\"'()[]{}<>") for w in normalised.split(" "))
    out.discard("")
    return out


def strings_in(value: Any, out: list[str] | None = None, *, keys: bool = True) -> list[str]:
    """Every string inside a JSON value (numbers as their text); map keys too unless ``keys`` is False."""
    if out is None:
        out = []
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int | float):
        out.append(str(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            if keys and isinstance(k, str):
                out.append(k)
            strings_in(v, out, keys=keys)
    elif isinstance(value, list | tuple):
        for v in value:
            strings_in(v, out, keys=keys)
    return out
