"""The bytes of an audit record: canonical JSON, its SHA-256, and templates that encode a record
whose fields repeat from call to call only once.

Canonical JSON is what anyone can recompute with the standard library, so the chain can be checked
without mcp-guard; every fast path here must give exactly those bytes (the tests compare them).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
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
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _stdlib_canonical(value)
    return _stdlib_canonical(value) if _small_float(data) else data


def _stdlib_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _small_float(data: bytes) -> bool:
    """Could ``data`` hold a float that orjson formats differently from the stdlib (|x| < 1e-4)?"""
    if b"0.0000" in data:
        return True
    i = data.find(b"e-")
    while i > 0:
        if 48 <= data[i - 1] <= 57 and i + 2 < len(data) and 48 <= data[i + 2] <= 57:
            return True
        i = data.find(b"e-", i + 2)
    return False


def args_hash(arguments: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a tool call's arguments (``None`` counts as ``{}``)."""
    return hashlib.sha256(canonical({} if arguments is None else arguments)).hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """The ``hash`` a record must carry: SHA-256 of its canonical JSON without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def line(data: bytes) -> tuple[str, bytes]:
    """The hash of a record's canonical bytes, and the line written: ``hash`` spliced in as the last key."""
    digest = hashlib.sha256(data).hexdigest()
    return digest, data[:-1] + b',"hash":"' + digest.encode() + b'"}\n'


class RecordTemplate:
    """The canonical JSON of records that share every field but a few ``slots`` (hash, time, ...):
    the shared fields are encoded once, and each record is one join of those bytes with its slots'.

    A slot's value must be a string (``fill`` encodes it as JSON, which for strings orjson spells
    exactly as the standard library does); ``fixed`` may hold anything ``canonical`` encodes.
    """

    __slots__ = ("_pieces", "slots")

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

    def fill(self, values: Sequence[str]) -> bytes:
        """The canonical JSON of the record with ``values`` in the slots (in ``slots`` order)."""
        pieces = self._pieces
        if len(values) != len(self.slots):
            raise ValueError(f"{len(self.slots)} slot values expected, got {len(values)}")
        out = [pieces[0]]
        for value, piece in zip(values, pieces[1:], strict=True):
            if type(value) is not str:
                raise TypeError(f"a slot value must be a string, not {type(value).__name__}")
            out.append(orjson.dumps(value))
            out.append(piece)
        return b"".join(out)


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
    return f"{stamp[1]}{micro:06d}Z"
