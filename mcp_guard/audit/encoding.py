"""The bytes of an audit record: canonical JSON, its SHA-256, and templates that encode a record
whose fields repeat from call to call only once.

Canonical JSON is what anyone can recompute with the standard library, so the chain can be checked
without mcp-guard; every fast path here must give exactly those bytes (the tests compare them).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

GENESIS = "0" * 64
"""``prev`` of the very first record of a log (no record before it)."""


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes, exactly ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False).encode()`` so anyone can recompute a hash with the standard library.

    orjson writes the same bytes ~30x faster except for floats in exponent form below 1e-4
    (``1e-05`` vs ``0.00001``) and integers beyond 64 bits; those rare values take the stdlib path.
    """
    try:
        data = _dumps(value, option=_SORTED)
    except TypeError:
        return _stdlib_canonical(value)
    if data.find(b"0.0000") >= 0 or data.find(b"e-") >= 0:  # (`in` on bytes costs an exception first)
        return _stdlib_canonical(value) if _SMALL_FLOAT.search(data) is not None else data
    return data


_dumps = orjson.dumps
_SORTED = orjson.OPT_SORT_KEYS
_SMALL_FLOAT = re.compile(rb"0\.0000|[0-9]e-[0-9]")
"""Where orjson's bytes may hold a float that it spells differently from the stdlib (|x| < 1e-4:
``0.00001`` or ``1e-7``); a string that merely looks like one only sends the value the slow way."""


def _stdlib_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def args_hash(arguments: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a tool call's arguments (``None`` counts as ``{}``)."""
    return _sha256(canonical({} if arguments is None else arguments)).hexdigest()


_sha256 = hashlib.sha256


def record_hash(record: Mapping[str, Any]) -> str:
    """The ``hash`` a record must carry: SHA-256 of its canonical JSON without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def line(data: bytes) -> tuple[str, bytes]:
    """The hash of a record's canonical bytes, and the line written: ``hash`` spliced in as the last key."""
    digest = _sha256(data).hexdigest()
    return digest, b"".join((data[:-1], b',"hash":"', digest.encode(), b'"}\n'))


class RecordTemplate:
    """The canonical JSON of records that share every field but a few ``slots`` (hash, time, ...):
    the shared fields are encoded once, and each record is one join of those bytes with its slots'.

    A slot's value must be a string (orjson spells a string exactly as the standard library does);
    ``fixed`` may hold anything ``canonical`` encodes.
    """

    __slots__ = ("_pieces", "fill_in", "slots")

    fill_in: Callable[[Mapping[str, str]], bytes]
    """:meth:`fill` with the values by slot name (``KeyError`` for a missing one)."""

    def __init__(self, fixed: Mapping[str, Any], slots: Sequence[str]) -> None:
        self.slots = tuple(sorted(slots))
        if len(set(self.slots)) != len(self.slots) or set(self.slots) & set(fixed):
            raise ValueError("a slot must be named once and not also be a fixed field")
        # Sorted as json.dumps(sort_keys=True) sorts: by the key strings; a field is '"key":value'.
        pieces: list[bytes] = []
        text = b"{"
        for i, key in enumerate(sorted([*fixed, *self.slots])):
            if i:
                text += b","
            if key in fixed:
                text += canonical({key: fixed[key]})[1:-1]
            else:
                pieces.append(text + canonical(key) + b":")
                text = b""
        pieces.append(text + b"}")
        self._pieces = tuple(pieces)
        self.fill_in = _joiner(self._pieces, self.slots)

    def fill(self, values: Sequence[str]) -> bytes:
        """The canonical JSON of the record with ``values`` in the slots (in ``slots`` order)."""
        if len(values) != len(self.slots):
            raise ValueError(f"{len(self.slots)} slot values expected, got {len(values)}")
        return self.fill_in(dict(zip(self.slots, values, strict=True)))


def _joiner(pieces: tuple[bytes, ...], names: tuple[str, ...]) -> Callable[[Mapping[str, str]], bytes]:
    """The record's bytes from its slot values by name: one join of the pieces with each value
    encoded. The audit writes records of four and six slots on every call, so those two shapes
    are spelled out (a loop over the slots cost about twice as much); any other count loops."""
    join, dumps = b"".join, orjson.dumps
    if len(names) == 4:
        p0, p1, p2, p3, p4 = pieces
        a, b, c, d = names

        def four(v: Mapping[str, str]) -> bytes:
            x, y, z, w = v[a], v[b], v[c], v[d]
            if type(x) is not str or type(y) is not str or type(z) is not str or type(w) is not str:
                raise _not_strings(x, y, z, w)
            return join((p0, dumps(x), p1, dumps(y), p2, dumps(z), p3, dumps(w), p4))

        return four
    if len(names) == 6:
        p0, p1, p2, p3, p4, p5, p6 = pieces
        a, b, c, d, e, f = names

        def six(v: Mapping[str, str]) -> bytes:
            x, y, z, w, u, t = v[a], v[b], v[c], v[d], v[e], v[f]
            if (type(x) is not str or type(y) is not str or type(z) is not str or type(w) is not str
                    or type(u) is not str or type(t) is not str):
                raise _not_strings(x, y, z, w, u, t)
            return join((p0, dumps(x), p1, dumps(y), p2, dumps(z), p3, dumps(w), p4, dumps(u), p5, dumps(t), p6))

        return six

    def any_count(v: Mapping[str, str]) -> bytes:
        out = [pieces[0]]
        for name, piece in zip(names, pieces[1:], strict=True):
            value = v[name]
            if type(value) is not str:
                raise _not_strings(value)
            out.append(dumps(value))
            out.append(piece)
        return join(out)

    return any_count


def _not_strings(*values: object) -> TypeError:
    wrong = next(v for v in values if type(v) is not str)
    return TypeError(f"a slot value must be a string, not {type(wrong).__name__}")


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on ``raw`` (one line), or None if it is not one (torn, foreign or empty)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(raw)  # integers beyond 64 bits
        except (ValueError, UnicodeDecodeError):
            return None
    return value if isinstance(value, dict) else None


_stamp: tuple[int, str] = (-1, "")  # (second, its "YYYY-MM-DDTHH:MM:SS." text), replaced as one object


def now() -> str:
    """UTC time as ``datetime.isoformat(timespec="microseconds")`` with ``Z``: the per-second part is
    formatted once a second, the microseconds arithmetically (a datetime per record was ~5 µs)."""
    global _stamp
    sec, micro = divmod(time.time_ns() // 1000, 1_000_000)
    stamp = _stamp
    if stamp[0] != sec:
        stamp = _stamp = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)))
    # printf-style: a format spec in an f-string costs a `__format__` call per record
    return "%s%06dZ" % (stamp[1], micro)  # noqa: UP031
