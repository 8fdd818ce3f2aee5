"""The content index behind ``carries``: what brought each label into a session, searchable fast.

Three guarantees (docs/policies.md), each with its own structure, built when content is added and
never per call:

* a shared run of ``RUN`` (24) characters or more: winnowing (Schleimer, Wilkerson and Aiken,
  2003).  Every window of ``W`` consecutive ``K``-gram hashes contributes its minimum; a run of
  ``W + K - 1`` characters holds a whole window, whose minimum both sides select.  The argument
  is winnowed the same way, its fingerprints looked up in a one-probe Bloom filter and then by
  binary search, and each hit verified against the text (a shared ``K``-gram is not yet a shared
  run of 24).
* a whole string of ``WHOLE`` (6) to 23 characters occurring in the content: every 6-gram of the
  string must be among the content's 6-gram hashes (a filter with no false negatives), and only
  then is the text searched exactly.
* ``match: token``: the normalised argument equals a whole token of the content (a set lookup).

Hashes are 64-bit polynomial hashes of code points; the run hashes are winnowed unmixed and mixed
once selected (a few hundred values per argument, not thousands).  64 bits, not 32: window minima
crowd into the low end of the range, so 32-bit fingerprints of a 4 KiB argument met about three
false candidates in 16 MiB, each costing a verification.  All of it is numpy over whole arrays
(in pure Python a rolling hash of a 4 KiB argument alone takes about a millisecond).  An
argument's forms (normalised, decoded) and fingerprints are kept in a small cache by value, so
the rules and labels that test one argument compute them once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mcp_guard.flow.text import forms, normalise, tokens

K = 16
W = 9
RUN = W + K - 1  # 24: any shared run this long is found
WHOLE = 6  # a whole string this long or longer is found
_VERIFY_MAX = 256  # content places checked per fingerprint; past this a hit counts (fail closed)
_BASE = np.uint64(0x100000001B3)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_S7 = np.uint64(7)
_BIT = np.array([1 << i for i in range(8)], dtype=np.uint8)  # a bit's mask in its byte
_EMPTY = np.zeros(0, dtype=np.uint64)
_LONG_WORD = re.compile(f"[^ ]{{{RUN}}}")  # in normalised text: a space-free stretch of RUN
_CACHED_CHARS = 1 << 16  # arguments longer than this are not kept in the per-value cache
assert K & (K - 1) == 0  # the run hash doubles its span up to K
_SPANS = tuple((1 << j, np.uint64(pow(int(_BASE), 1 << j, 1 << 64))) for j in range(K.bit_length() - 1))


def codes_of(text: str) -> np.ndarray:
    """The code points of ``text`` (uint64)."""
    if text.isascii():  # a flag of the string: one byte per code point, a quarter of the copying
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.uint64)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def run_hashes(codes: np.ndarray) -> np.ndarray:
    """The unmixed polynomial hash of every ``K``-gram of ``codes``, by doubling spans
    (``H(ab) = H(a) * B**len(b) + H(b)``): log2(K) multiply-adds over the whole array."""
    if len(codes) < K:
        return _EMPTY
    h = codes
    for span, power in _SPANS:
        longer = h[:-span] * power
        longer += h[span:]  # in place: one new array per step, not two
        h = longer
    return h


def mix(h: np.ndarray) -> np.ndarray:
    """A bijective mix of hashes (fingerprints are stored mixed, so a Bloom slot taken from their
    low bits is well spread: the low bits of a polynomial hash are not)."""
    h = h ^ (h >> _S33)
    h *= _M1
    h ^= h >> _S33
    return h


def _adjacent_unique(values: np.ndarray) -> np.ndarray:
    """``values`` without repeats of the previous value (window minima repeat in runs)."""
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    out: np.ndarray = values.take(np.flatnonzero(keep))  # cheaper than a boolean mask's subscript
    return out


def grams(codes: np.ndarray, k: int) -> np.ndarray:
    """The mixed hash of every ``k``-gram of ``codes`` (empty when shorter than ``k``).

    Polynomial hashes compose (``H(ab) = H(a) * B**len(b) + H(b)``), so a ``k``-gram hash is
    built from the power-of-two lengths of ``k``'s binary form: a few array operations, not ``k``."""
    n = len(codes) - k + 1
    if n <= 0:
        return _EMPTY
    power = codes  # hashes of 2**j-grams, j growing
    span = 1
    out: np.ndarray | None = None
    width = 0
    rest = k
    while True:
        if rest & 1:
            if out is None:
                out, width = power[: len(codes) - span + 1].copy(), span
            else:  # append a span-gram after the width-gram
                m = len(codes) - (width + span) + 1
                out = out[:m] * _pow(span) + power[width:width + m]
                width += span
        rest >>= 1
        if not rest:
            break
        power = power[:-span] * _pow(span) + power[span:]
        span *= 2
    assert out is not None and len(out) == n
    return mix(out)


@functools.lru_cache(maxsize=64)
def _pow(span: int) -> np.uint64:
    """``_BASE ** span`` modulo 2**64."""
    return np.uint64(pow(int(_BASE), span, 1 << 64))


def window_minima(h: np.ndarray) -> np.ndarray:
    """The minimum of every window of ``W`` consecutive hashes (doubling: 1, 2, 4, 8, then 9)."""
    if len(h) < W:
        return _EMPTY
    m = h
    for span in (1, 2, 4):
        m = np.minimum(m[:-span], m[span:])
    out: np.ndarray = np.minimum(m[:-1], h[W - 1:])
    return out


def _uniq(values: np.ndarray) -> np.ndarray:
    """Sorted unique values (a sort: numpy's hash-based ``unique`` is far slower on 64-bit hashes)."""
    s = np.sort(values)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


class _Sixes:
    """Sorted unique 6-gram hashes in a few chunks merged like a binary counter, behind a Bloom
    filter of about 1 in 10 bits set: a string that is not in the content almost always has a
    6-gram the filter rules out, so it costs no binary search."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.bits = _Bits(10)

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        chunk = _uniq(values)
        self.bits.add(chunk, [*self.chunks, chunk])
        while self.chunks and len(self.chunks[-1]) <= 2 * len(chunk):
            chunk = _uniq(np.concatenate((self.chunks.pop(), chunk)))
        self.chunks.append(chunk)

    def all(self, q: np.ndarray) -> bool:
        if len(self.bits.maybe(q)) < len(q):
            return False
        hit = np.zeros(len(q), dtype=bool)
        for chunk in self.chunks:  # clip: a query past the last value meets the last value, not itself
            hit |= chunk.take(np.searchsorted(chunk, q), mode="clip") == q
        return bool(hit.all())


class _Bits:
    """A one-probe Bloom filter over mixed hashes, sized to hold about 1 in ``spread`` bits set
    (``1 / spread`` false positives): one random read per query hash, before any binary search.
    A hash's top bits choose the byte, its low three bits the bit in it."""

    def __init__(self, spread: int) -> None:
        self.spread = spread
        self.size = 1 << 16
        self.bits = np.zeros(self.size // 8, dtype=np.uint8)
        self.shift = _byte_shift(self.size)
        self.count = 0

    def add(self, values: np.ndarray, everything: list[np.ndarray]) -> None:
        self.count += len(values)
        if self.count * self.spread > self.size:
            while self.count * self.spread > self.size:
                self.size *= 2
            self.bits = np.zeros(self.size // 8, dtype=np.uint8)
            self.shift = _byte_shift(self.size)
            for chunk in everything:
                self._set(chunk)
        else:
            self._set(values)

    def _set(self, values: np.ndarray) -> None:
        np.bitwise_or.at(self.bits, values >> self.shift, _BIT.take(values & _S7))

    def maybe(self, q: np.ndarray) -> np.ndarray:
        """The indices of ``q`` that may be in the set."""
        out: np.ndarray = np.flatnonzero(self.bits.take(q >> self.shift) & _BIT.take(q & _S7))
        return out


def _byte_shift(size: int) -> np.uint64:
    """The shift that leaves a 64-bit hash's top bits as a byte index into ``size`` bits."""
    return np.uint64(64 - (size // 8).bit_length() + 1)


class _Prints:
    """Winnowing fingerprints (mixed) with where each was taken (piece << 32 | offset), sorted."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.bits = _Bits(40)

    def add(self, piece: int, h: np.ndarray) -> None:
        if len(h) < W:
            return
        values, where = _selected(h)
        values = mix(values)
        order = np.argsort(values, kind="stable")
        chunk = (values[order], where[order].astype(np.uint64) | (np.uint64(piece) << _S32))
        self.bits.add(chunk[0], [c[0] for c in self.chunks] + [chunk[0]])
        while self.chunks and len(self.chunks[-1][0]) <= 2 * len(chunk[0]):
            old = self.chunks.pop()
            both_v, both_w = np.concatenate((old[0], chunk[0])), np.concatenate((old[1], chunk[1]))
            order = np.argsort(both_v, kind="stable")
            chunk = (both_v[order], both_w[order])
        self.chunks.append(chunk)

    def places(self, value: np.uint64) -> list[int]:
        out: list[int] = []
        for values, where in self.chunks:
            lo = int(np.searchsorted(values, value, "left"))
            hi = int(np.searchsorted(values, value, "right"))
            out.extend(int(x) for x in where[lo:min(hi, lo + _VERIFY_MAX + 1)])
        return out

    def found(self, q: np.ndarray) -> np.ndarray:
        """The indices of the fingerprints ``q`` that are in the set."""
        idx = self.bits.maybe(q)
        if not len(idx):
            return idx
        sub = q.take(idx)
        hit = np.zeros(len(sub), dtype=bool)
        for values, _where in self.chunks:  # clip: as in ``_Sixes.all``
            hit |= values.take(np.searchsorted(values, sub), mode="clip") == sub
        out: np.ndarray = idx[hit]
        return out


def _selected(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Winnowing: each window's minimum with the offset of the first k-gram in it that has it; one
    entry per distinct offset, in text order."""
    offsets = sliding_window_view(h, W).argmin(axis=1)  # argmin: the first of equal minima
    offsets += np.arange(len(offsets))
    keep = np.ones(len(offsets), dtype=bool)
    keep[1:] = offsets[1:] != offsets[:-1]
    offsets = offsets[keep]
    return h[offsets], offsets


class _Query:
    """Normalised argument forms as the run search reads them, joined by a newline into one text
    (normalised text never holds one, so no shared run crosses a joint, and the numpy work is paid
    once): its fingerprints (mixed) and, for each, its unmixed hash (to find where it sits when it
    is found)."""

    __slots__ = ("prints", "text", "unmixed")

    def __init__(self, texts: tuple[str, ...]) -> None:
        self.text = "\n".join(texts)
        self.unmixed = _adjacent_unique(window_minima(run_hashes(codes_of(self.text))))
        self.prints = mix(self.unmixed)


class _Argument:
    """An argument string as ``carries`` compares it: its forms (normalised, decoded), its long
    forms (and those of them that hold a space), and the run search's queries over those, built
    when first needed.  Kept per value, so the rules and labels that test one argument compute all
    of it once."""

    __slots__ = ("_query", "_spaced", "_spaced_query", "forms", "long")

    def __init__(self, raw: str) -> None:
        self.forms = forms(raw)
        self.long = tuple(f for f in self.forms if len(f) >= RUN)
        self._spaced: tuple[str, ...] | None = None
        self._query: _Query | None = None
        self._spaced_query: _Query | None = None

    def spaced(self) -> tuple[str, ...]:
        """The long forms that hold a space."""
        if self._spaced is None:
            self._spaced = tuple(f for f in self.long if " " in f)
        return self._spaced

    def query(self, spaced: bool = False) -> _Query:
        """The query over the long forms (``spaced``: only those that hold a space)."""
        if spaced:
            if self._spaced_query is None:
                self._spaced_query = _Query(self.spaced())
            return self._spaced_query
        if self._query is None:
            self._query = _Query(self.long)
        return self._query


_cached_argument = functools.lru_cache(maxsize=256)(_Argument)


def _argument(raw: str) -> _Argument:
    return _cached_argument(raw) if len(raw) <= _CACHED_CHARS else _Argument(raw)


def forms_of(raw: str) -> tuple[str, ...]:
    """The forms ``carries`` compares for an argument string (cached by value)."""
    return _argument(raw).forms


@dataclass(slots=True)
class _LabelContent:
    """The content that brought one label."""

    texts: list[str] = field(default_factory=list)
    prints: _Prints = field(default_factory=_Prints)
    sixes: _Sixes = field(default_factory=_Sixes)
    tokens: set[str] = field(default_factory=set)
    long_words: bool = False  # some space-free stretch of RUN characters or more (a URL, an id, a blob)

    def add(self, text: str) -> None:
        self.long_words = self.long_words or _LONG_WORD.search(text) is not None
        codes = codes_of(text)
        self.prints.add(len(self.texts), run_hashes(codes))
        self.texts.append(text)
        self.sixes.add(grams(codes, WHOLE))
        self.tokens.update(tokens(text))

    def holds_whole(self, text: str) -> bool:
        """``text`` (6..23 normalised characters) occurs whole in this content."""
        if not self.sixes.all(grams(codes_of(text), WHOLE)):
            return False  # some 6-gram occurs nowhere: this filter has no false negatives
        return any(text in t for t in self.texts)

    def shares_run(self, query: _Query) -> bool:
        """One of the query's texts shares a run of ``RUN`` or more characters with this content."""
        found = self.prints.found(query.prints)
        if not len(found):
            return False
        text = query.text
        h = run_hashes(codes_of(text))  # where each found fingerprint sits: recomputed, found is rare
        for i in found:
            places = self.prints.places(query.prints[i])
            if len(places) > _VERIFY_MAX:
                return True  # too common to check each place: fail closed
            for qp in np.flatnonzero(h == query.unmixed[i]):
                for place in places:
                    if _run_through(text, int(qp), self.texts[place >> 32], place & 0xFFFFFFFF):
                        return True
        return False


def _run_through(q: str, qp: int, t: str, cp: int) -> bool:
    """Whether the K-grams at ``q[qp:]`` and ``t[cp:]`` are equal and lie in a common run of RUN."""
    if q[qp:qp + K] != t[cp:cp + K]:
        return False  # a hash collision
    need = RUN - K
    left = 0
    while left < need and qp - left > 0 and cp - left > 0 and q[qp - left - 1] == t[cp - left - 1]:
        left += 1
    right = 0
    qe, ce = qp + K, cp + K
    while left + right < need and qe + right < len(q) and ce + right < len(t) and q[qe + right] == t[ce + right]:
        right += 1
    return left + right >= need


class ContentIndex:
    """What brought each label into one session, indexed (add-only, like the labels)."""

    def __init__(self) -> None:
        self._by_label: dict[str, _LabelContent] = {}
        self.chars = 0

    def add(self, labels: Iterable[str], text: str) -> None:
        norm = normalise(text)
        if not norm:
            return
        self.chars += len(norm)
        for label in labels:
            self._by_label.setdefault(label, _LabelContent()).add(norm)

    def carries(self, strings: Sequence[str], labels: Iterable[str], *, token: bool = False,
                endorsed: frozenset[str] = frozenset(), endorsed_for: frozenset[str] = frozenset()) -> bool:
        """Whether any of ``strings`` shares content with what brought one of ``labels``.

        ``endorsed`` (normalised strings the principal named for this task) never count toward a
        label in ``endorsed_for``: an argument equal to one is clean, and a run inside one is no match.
        """
        contents = [(c, endorsed if label in endorsed_for else frozenset())
                    for label in labels if (c := self._by_label.get(label)) is not None]
        if not contents:
            return False
        for raw in strings:
            arg = _argument(raw)
            for content, mask in contents:
                if _matches(content, arg, token, mask):
                    return True
        return False


def _matches(content: _LabelContent, arg: _Argument, token: bool, endorsed: frozenset[str]) -> bool:
    long: list[str] = []
    # normalised text has no whitespace but single spaces, so a run of RUN inside a form without one
    # is a space-free stretch that long: when the content has none, only spaced forms can share one
    spaced = not content.long_words
    for text in arg.forms:
        if endorsed and text in endorsed:
            continue
        if token and text in content.tokens:
            return True
        if len(text) < WHOLE:
            continue
        if len(text) < RUN:
            if content.holds_whole(text):
                return True
            continue
        for e in endorsed:
            if e in text:
                text = text.replace(e, "\x00")  # a run inside an endorsed string is no match
        if not spaced or " " in text:
            long.append(text)
    if not long:
        return False
    # the long forms searched in one pass; endorsed strings that cut or skip one make a query of its own
    same = tuple(long) == (arg.spaced() if spaced else arg.long)
    return content.shares_run(arg.query(spaced) if same else _Query(tuple(long)))


__all__ = ["RUN", "WHOLE", "ContentIndex", "K", "W", "codes_of", "forms_of", "grams", "mix", "run_hashes",
           "window_minima"]
