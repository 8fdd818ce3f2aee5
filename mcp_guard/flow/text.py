"""Text as ``carries`` compares it: normalised, and decoded where an argument hides an encoding.

Normalisation (NFKC, case folding, whitespace runs collapsed to one space) makes look-alike forms
of the same text compare equal.  An argument is also read after decoding every base64, hex and
percent-encoded run inside it, so ``aGVsbG8gd29ybGQ=`` carries what ``hello world`` carries.
Pure and cheap: regular expressions compiled once, nothing but ``str`` work per call.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

# base64 (standard or URL-safe alphabet) with optional padding; runs of 8+ characters are decoded.
# A plain word (lower-case or capitalised letters only) is not read as base64.
_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){4,}")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")
_TOKEN = re.compile(r"\w+")
_DEPTH = 2  # encodings inside encodings, read this deep


def normalise(text: str) -> str:
    """NFKC, case folded, whitespace runs as one space: the form every comparison uses."""
    if text.isascii():
        folded = text.lower()  # casefold and NFKC are the identity on ASCII apart from case
    else:
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def _printable(raw: bytes) -> str | None:
    """Decoded bytes as text when they are UTF-8 and at least half printable (else it was no encoding)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    shown = sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t")
    return text if shown * 2 >= len(text) else None


def _b64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def decoded(text: str, depth: int = _DEPTH) -> Iterator[str]:
    """Every decoding of an encoded run inside ``text`` (base64, hex, percent), recursively."""
    if depth <= 0 or len(text) < 6:
        return
    found: list[str] = []
    if "%" in text and _PCT.search(text):
        plain = unquote(text, errors="replace")  # never raises: bad bytes read as U+FFFD
        if plain != text:
            found.append(plain)
    for run in _HEX.findall(text):  # hex inside anything (0x..., key=...), one C pass
        got = _printable(bytes.fromhex(run))
        if got is not None:
            found.append(got)
    for run in _RUN.findall(text):  # one pass; each run is then read as base64
        if run.isalpha() and (run.islower() or run.istitle()):
            continue  # a plain word: base64 of text practically never is one
        got = _b64(run)
        if got is not None:
            found.append(got)
    for item in found:
        yield item
        yield from decoded(item, depth - 1)


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
