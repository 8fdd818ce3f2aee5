"""The straightforward implementation of what ``carries`` compares, kept as the oracle for the fast
paths in ``mcp_guard.flow``: regular expressions over the whole text, a character-by-character
printable count, and a brute-force search of every shared run."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import unquote

from mcp_guard.flow import RUN, WHOLE, tokens

_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){4,}")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    shown = sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t")
    return text if shown * 2 >= len(text) else None


def b64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return printable(raw)


def decoded(text: str, depth: int = 2) -> Iterator[str]:
    if depth <= 0 or len(text) < 6:
        return
    found: list[str] = []
    if _PCT.search(text):
        plain = unquote(text, errors="replace")
        if plain != text:
            found.append(plain)
    for run in _HEX.findall(text):
        got = printable(bytes.fromhex(run))
        if got is not None:
            found.append(got)
    for run in _RUN.findall(text):
        if run.isalpha() and (run.islower() or run.istitle()):
            continue
        got = b64(run)
        if got is not None:
            found.append(got)
    for item in found:
        yield item
        yield from decoded(item, depth - 1)


def carries(contents: Mapping[str, list[str]], strings: Iterable[str], labels: Iterable[str], *,
            token: bool = False, endorsed: frozenset[str] = frozenset(),
            endorsed_for: frozenset[str] = frozenset()) -> bool:
    """``ContentIndex.carries`` by brute force over the raw content of each label."""
    strings = list(strings)
    for label in labels:
        texts = [t for t in (normalise(x) for x in contents.get(label, [])) if t]
        if not texts:
            continue
        mask = endorsed if label in endorsed_for else frozenset()
        words = set().union(*(tokens(t) for t in texts))
        for raw in strings:
            for form in [raw, *(decoded(raw) if len(raw) >= WHOLE else ())]:
                text = normalise(form)
                if not text or text in mask:
                    continue
                if token and text in words:
                    return True
                if len(text) < WHOLE:
                    continue
                if len(text) < RUN:
                    if any(text in t for t in texts):
                        return True
                    continue
                for e in mask:
                    if e in text:
                        text = text.replace(e, "\x00")
                runs = {text[i:i + RUN] for i in range(len(text) - RUN + 1)}
                if any(run in t for t in texts for run in runs):
                    return True
    return False
