"""The content index behind ``carries``: what brought each label into a session, searchable fast.

Three guarantees (docs/policies.md), each with its own structure, built when content is added and
never per call:

* a shared run of ``RUN`` (24) characters or more: winnowing (Schleimer, Wilkerson and Aiken,
  2003).  Every window of ``W`` consecutive ``K``-gram hashes contributes its minimum; a run of
  ``W + K - 1`` characters holds a whole window, whose minimum both sides select.  The argument
  is winnowed the same way, its fingerprints looked up by binary search, and each hit verified
  against the text (a shared ``K``-gram is not yet a shared run of 24).
* a whole string of ``WHOLE`` (6) to 23 characters occurring in the content: every 6-gram of the
  string must be among the content's 6-gram hashes (a filter with no false negatives), and only
  then is the text searched exactly.
* ``match: token``: the normalised argument equals a whole token of the content (a set lookup).

Hashes are 64-bit polynomial hashes of code points, mixed, computed by numpy over whole arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mcp_guard.flow.text import decoded, normalise, tokens

K = 16
W = 9
RUN = W + K - 1  # 24: any shared run this long is found
WHOLE = 6  # a whole string this long or longer is found
_VERIFY_MAX = 256  # content places checked per fingerprint; past this a hit counts (fail closed)
_BASE = np.uint64(0x100000001B3)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)
_EMPTY = np.zeros(0, dtype=np.uint64)


def codes_of(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


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
    h = out.copy()
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    return h


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
    """Sorted unique 6-gram hashes in a few chunks merged like a binary counter."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        chunk = _uniq(values)
        while self.chunks and len(self.chunks[-1]) <= 2 * len(chunk):
            chunk = _uniq(np.concatenate((self.chunks.pop(), chunk)))
        self.chunks.append(chunk)

    def all(self, q: np.ndarray) -> bool:
        hit = np.zeros(len(q), dtype=bool)
        for chunk in self.chunks:
            idx = np.searchsorted(chunk, q)
            idx[idx == len(chunk)] = 0
            hit |= chunk[idx] == q
        return bool(hit.all())


class _Bits:
    """A one-probe Bloom filter over hashes, sized to hold about 1 in 40 bits set (about 2.5%
    false positives): one random read per query hash, before any binary search."""

    def __init__(self) -> None:
        self.size = 1 << 16
        self.bits = np.zeros(self.size // 8, dtype=np.uint8)
        self.count = 0

    def add(self, values: np.ndarray, everything: list[np.ndarray]) -> None:
        self.count += len(values)
        if self.count * 40 > self.size:
            while self.count * 40 > self.size:
                self.size *= 2
            self.bits = np.zeros(self.size // 8, dtype=np.uint8)
            for chunk in everything:
                self._set(chunk)
        else:
            self._set(values)

    def _set(self, values: np.ndarray) -> None:
        slot = values & np.uint64(self.size - 1)
        np.bitwise_or.at(self.bits, (slot >> np.uint64(3)).astype(np.intp), (np.uint8(1) << (slot & np.uint64(7)).astype(np.uint8)))

    def maybe(self, q: np.ndarray) -> np.ndarray:
        slot = q & np.uint64(self.size - 1)
        keep = (self.bits[(slot >> np.uint64(3)).astype(np.intp)] >> (slot & np.uint64(7)).astype(np.uint8)) & 1 == 1
        out: np.ndarray = q[keep]
        return out


class _Prints:
    """Winnowing fingerprints with where each was taken (piece << 32 | offset), sorted by hash."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.bits = _Bits()

    def add(self, piece: int, h: np.ndarray) -> None:
        minima = window_minima(h)
        if not len(minima):
            return
        values, where = _uniq_with_offsets(h, minima)
        where = where.astype(np.uint64) | (np.uint64(piece) << _S32)
        chunk = (values, where)
        self.bits.add(values, [c[0] for c in self.chunks] + [values])
        while self.chunks and len(self.chunks[-1][0]) <= 2 * len(values):
            old = self.chunks.pop()
            both_v, both_w = np.concatenate((old[0], chunk[0])), np.concatenate((old[1], chunk[1]))
            order = np.argsort(both_v, kind="stable")
            chunk = (both_v[order], both_w[order])
            values = chunk[0]
        self.chunks.append(chunk)

    def places(self, value: np.uint64) -> list[int]:
        out: list[int] = []
        for values, where in self.chunks:
            lo = int(np.searchsorted(values, value, "left"))
            hi = int(np.searchsorted(values, value, "right"))
            out.extend(int(x) for x in where[lo:min(hi, lo + _VERIFY_MAX + 1)])
        return out

    def candidates(self, q: np.ndarray) -> np.ndarray:
        q = self.bits.maybe(q)
        hit = np.zeros(len(q), dtype=bool)
        for values, _where in self.chunks:
            idx = np.searchsorted(values, q)
            idx[idx == len(values)] = 0
            hit |= values[idx] == q
        return q[hit]


def _uniq_with_offsets(h: np.ndarray, minima: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The selected hashes (each window's minimum) with the offset of the k-gram that has it,
    sorted by hash; one entry per distinct (hash, offset)."""
    windows = np.arange(len(minima))
    # the offset of a window's minimum: the first k-gram in the window equal to it
    offsets = windows.copy()
    for j in range(1, W):
        later = (h[windows + j] == minima) & (h[offsets] != minima)
        offsets[later] = windows[later] + j
    keep = np.ones(len(offsets), dtype=bool)
    keep[1:] = offsets[1:] != offsets[:-1]
    values, offsets = minima[keep], offsets[keep]
    order = np.argsort(values, kind="stable")
    return values[order], offsets[order]


@dataclass(slots=True)
class _LabelContent:
    """The content that brought one label."""

    texts: list[str] = field(default_factory=list)
    prints: _Prints = field(default_factory=_Prints)
    sixes: _Sixes = field(default_factory=_Sixes)
    tokens: set[str] = field(default_factory=set)

    def add(self, text: str) -> None:
        codes = codes_of(text)
        self.prints.add(len(self.texts), grams(codes, K))
        self.texts.append(text)
        self.sixes.add(grams(codes, WHOLE))
        self.tokens.update(tokens(text))

    def holds_whole(self, text: str, codes: np.ndarray) -> bool:
        """``text`` (6..23 normalised characters) occurs whole in this content."""
        if not self.sixes.all(grams(codes, WHOLE)):
            return False  # some 6-gram occurs nowhere: this filter has no false negatives
        return any(text in t for t in self.texts)

    def shares_run(self, text: str, codes: np.ndarray) -> bool:
        """``text`` shares a run of ``RUN`` or more characters with this content."""
        h = grams(codes, K)
        hits = self.prints.candidates(_uniq(window_minima(h)))
        for value in hits:
            places = self.prints.places(value)
            if len(places) > _VERIFY_MAX:
                return True  # too common to check each place: fail closed
            for qp in np.flatnonzero(h == value):
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
        for label in labels:
            content = self._by_label.get(label)
            if content is None:
                continue
            mask = endorsed if label in endorsed_for else frozenset()
            for raw in strings:
                if _matches(content, raw, token, mask):
                    return True
        return False


def _matches(content: _LabelContent, raw: str, token: bool, endorsed: frozenset[str]) -> bool:
    forms = [raw]
    if len(raw) >= WHOLE:
        forms.extend(decoded(raw))
    for form in forms:
        text = normalise(form)
        if not text or text in endorsed:
            continue
        if token and text in content.tokens:
            return True
        if len(text) < WHOLE:
            continue
        if len(text) < RUN:
            if content.holds_whole(text, codes_of(text)):
                return True
            continue
        for e in endorsed:
            if e in text:
                text = text.replace(e, "\x00")  # a run inside an endorsed string is no match
        if content.shares_run(text, codes_of(text)):
            return True
    return False


__all__ = ["RUN", "WHOLE", "ContentIndex", "K", "W", "codes_of", "grams", "window_minima"]
