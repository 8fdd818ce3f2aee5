"""A scope's record written straight to OTLP bytes, on the span export thread.

Building a ``LightSpan`` and its attribute dicts for every record, then encoding them, cost about
60,000 instructions per span.  Yet a span's attributes and name are the same call after call for
the same (method, tool, principal, verdict, outcome kind...): each record says which with its
``wire()`` key, and the span's ``name``/``kind`` fields and its attribute block are encoded once
per key (from the record's ``light()``, through ``SpanEncoder``, so the bytes are the ones it
writes).  Every other span is the cached blocks with the few fields that differ written in
between: ids, times, the per-request attributes (JSON-RPC id, resource URI) and the status.
``wire()`` returns those fields with the key (read in the record's own method, where attribute
reads are specialised to its class: the encoder's loop sees three classes and reads each slot at
the generic attribute path's price); the trace id's bytes are made once for a request's spans in
a row, the JSON-RPC id's head once per length, a span's tag and length once per size.  A
record whose key is None (an exception's event, an approval's event) is encoded from its
``light()`` as before.  A batch hands the GIL over between slices of ``YIELD_EVERY`` spans, so an event loop
woken while a batch is encoded waits for that many spans, not for the interpreter's 5 ms switch
interval.  ``tests/telemetry/test_span_wire.py`` checks the bytes against the
``LightSpan`` path and the SDK's encoder.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from mcp_guard.telemetry.attributes import JSONRPC_REQUEST_ID
from mcp_guard.telemetry.export import (
    _BLOCK_LIMIT,
    _FLAGS,
    _FLAGS_HAS_IS_REMOTE,
    _FLAGS_IS_REMOTE,
    _FLAGS_TAG,
    _KIND,
    _PARENT,
    _SMALL,
    LightOTLPSpanExporter,
    SpanEncoder,
    _field,
    _varint,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import TraceState

    from mcp_guard.telemetry.spans import LightSpan

# Span.trace_id (1): its tag, then the id's 16 bytes (made once for a request's spans in a row);
# span_id (2) alone or with parent_span_id (4) in one pack, big-endian
_TRACE_TAG = b"\x0a\x10"
_SPAN = struct.Struct(">2sQ")
_STARTED = struct.Struct("<QBQ")  # start_time_unix_nano's value (its tag ends the cached name), end_time_unix_nano (8)
_SPAN_PARENT = struct.Struct(">2sQ2sQ")
# Span's tag and length, made once for each length below this (a varint of one or two bytes)
_HEADS_KEPT = 0x4000
_SPAN_HEADS: list[bytes | None] = [None] * _HEADS_KEPT
_UNSET = b"\x7a\x00"  # Span.status, always written (the SDK does), empty when unset
_TAIL = (_UNSET + _FLAGS.pack(_FLAGS_TAG, _FLAGS_HAS_IS_REMOTE),
         _UNSET + _FLAGS.pack(_FLAGS_TAG, _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE))
_FLAG_BYTES = (_FLAGS.pack(_FLAGS_TAG, _FLAGS_HAS_IS_REMOTE),
               _FLAGS.pack(_FLAGS_TAG, _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE))
_ERROR_CODE = b"\x18\x02"  # Status.code = STATUS_CODE_ERROR

# spans encoded between two hand-overs of the GIL (``time.sleep(0)``) in a batch: encoding 512 spans
# holds it for a few milliseconds, and an event loop woken meanwhile would wait for the switch interval
YIELD_EVERY = 64
_pause = time.sleep

# what ``wire()`` returns: (the key of the span's name and attribute block, or None for the
# ``light()`` path; its ``jsonrpc.request.id`` or None; its other per-request attributes; None when
# its status is unset, else (the error's description or None,); then the record's trace_id,
# span_id, parent_id, state, remote, start, end)
Wired = tuple["Hashable | None", "str | None", "Sequence[tuple[str, Any]]", "tuple[str | None] | None",
              int, int, int, "TraceState | None", bool, int, int]


class Finished(Protocol):
    """A scope's record, ended on the event loop: the export thread makes its span."""

    trace_id: int
    span_id: int
    parent_id: int
    remote: bool
    state: TraceState | None
    start: int
    end: int

    def light(self) -> LightSpan: ...

    def wire(self) -> Wired: ...


class RecordEncoder(SpanEncoder):
    """``SpanEncoder`` for records: a span's repeating bytes once per ``wire()`` key."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        super().__init__(resource, scope)
        self._wired: dict[Hashable, tuple[bytes, bytes, int]] = {}
        self._heads: dict[str, tuple[bytes, ...]] = {}  # few keys: the guard's per-request attribute names

    def _learn(self, key: Hashable, record: Finished) -> tuple[bytes, bytes, int]:
        """(name and kind fields, attribute block, their length with the times') of ``key``'s spans,
        encoded from ``record.light()``."""
        span = record.light()
        # Span.name (5), Span.kind (6), and the tag of start_time_unix_nano (7), which ``_STARTED`` packs
        name = _field(b"\x2a", span.name.encode("utf-8")) + b"\x30" + _SMALL[_KIND[span.kind]] + b"\x39"
        block = self._block_of(span.attrs) if span.attrs else b""
        if len(self._wired) >= _BLOCK_LIMIT:
            self._wired.clear()
        found = self._wired[key] = (name, block, len(name) + _STARTED.size + len(block))
        return found

    def _unique_heads(self, key: str) -> tuple[bytes, ...]:
        """``Span.attributes``' tag and length, ``KeyValue.key`` and the ``AnyValue`` head of ``key``
        with a string value of each length m (the m-th), for the lengths that frame in one byte each."""
        head = _field(b"\x0a", key.encode("utf-8")) + b"\x12"
        found = self._heads[key] = tuple(  # every length below fits in one byte
            b"\x4a" + _SMALL[len(head) + 3 + m] + head + _SMALL[m + 2] + b"\x0a" + _SMALL[m]
            for m in range(0x80 - len(head) - 3))
        return found

    def records(self, batch: Sequence[Finished]) -> bytes:
        """``collector.trace.v1.ExportTraceServiceRequest`` holding the spans of ``batch``: each the
        same bytes as ``SpanEncoder.span(r.light())``.  The pieces are joined once per batch (their
        lengths are added up, not measured on copies)."""
        parts = [b"", b"", b"", b""]  # the envelope's heads, filled in last
        total = 0
        wired, heads, span_heads = self._wired, self._heads, _SPAN_HEADS
        id_heads = heads.get(JSONRPC_REQUEST_ID) or self._unique_heads(JSONRPC_REQUEST_ID)
        last_trace, trace = -1, b""
        for at in range(0, len(batch), YIELD_EVERY):
            if at:  # a waiting event loop would get the GIL only after the 5 ms switch interval
                _pause(0)
            for r in batch[at:at + YIELD_EVERY]:
                # one call for every field (a record's own method reads its slots at the specialised speed)
                key, rid, unique, error, trace_id, span_id, parent, state, remote, start, end = r.wire()
                try:
                    found = wired.get(key) if key is not None else None
                except TypeError:  # an unhashable value where the guard's own code puts a str or a tuple
                    key = None
                if key is None:
                    span = self.span(r.light())
                    n = len(span)
                    head = b"\x12" + (_SMALL[n] if n < 0x80 else _varint(n))
                    parts += (head, span)
                    total += len(head) + n
                    continue
                if found is None:
                    found = self._learn(key, r)
                if trace_id != last_trace:  # a request's spans share their trace and mostly come one after another
                    last_trace, trace = trace_id, _TRACE_TAG + trace_id.to_bytes(16, "big")
                if state:
                    ids = (_SPAN.pack(b"\x12\x08", span_id)
                           + _field(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items()).encode()))
                    if parent:
                        ids += _PARENT.pack(b"\x22\x08", parent)
                elif parent:
                    ids = _SPAN_PARENT.pack(b"\x12\x08", span_id, b"\x22\x08", parent)
                else:
                    ids = _SPAN.pack(b"\x12\x08", span_id)
                name, block, fixed = found
                here = len(parts)  # the span's tag and length go here once its size is known
                parts += (b"", trace, ids, name, _STARTED.pack(start, 0x41, end), block)
                n = 18 + len(ids) + fixed  # the trace id's 18 bytes, then the rest
                # Span.attributes (9) of this request, then Span.status (15) and Span.flags (16): pieces
                # joined with the batch, not concatenated per span
                if rid is not None:  # a JSON-RPC id: short, a string
                    raw = rid.encode("utf-8")
                    m = len(raw)
                    if m < len(id_heads):
                        prefix = id_heads[m]
                        parts += (prefix, raw)
                        n += len(prefix) + m
                    else:
                        attr = self._unique(JSONRPC_REQUEST_ID, rid)
                        parts.append(attr)
                        n += len(attr)
                for k, v in unique:
                    if v.__class__ is str:
                        raw = v.encode("utf-8")
                        m = len(raw)
                        framed = heads.get(k) or self._unique_heads(k)
                        if m < len(framed):  # KeyValue{key, AnyValue{string_value}}, every length one byte
                            prefix = framed[m]
                            parts += (prefix, raw)
                            n += len(prefix) + m
                            continue
                    attr = self._unique(k, v)
                    parts.append(attr)
                    n += len(attr)
                if error is None:
                    tail = _TAIL[remote]
                else:
                    message = error[0]
                    status = (_field(b"\x12", message.encode("utf-8")) if message else b"") + _ERROR_CODE
                    m = len(status)
                    tail = b"\x7a" + (_SMALL[m] if m < 0x80 else _varint(m)) + status + _FLAG_BYTES[remote]
                parts.append(tail)
                n += len(tail)
                kept = span_heads[n] if n < _HEADS_KEPT else None
                if kept is None:
                    kept = b"\x12" + _varint(n)
                    if n < _HEADS_KEPT:
                        span_heads[n] = kept
                parts[here] = kept
                total += len(kept) + n
        # ResourceSpans{resource, scope_spans: ScopeSpans{scope, spans..., schema_url}, schema_url}
        scope_spans = len(self._scope) + total + len(self._scope_tail)
        parts[2] = b"\x12" + _varint(scope_spans)
        parts[3] = self._scope
        parts[1] = self._resource
        parts[0] = b"\x0a" + _varint(len(self._resource) + len(parts[2]) + scope_spans + len(self._resource_tail))
        parts += (self._scope_tail, self._resource_tail)
        return b"".join(parts)


def record_sender(exporter: SpanExporter, resource: Resource, scope: InstrumentationScope,
                  ) -> Callable[[list[Finished]], bool]:
    """How a batch of records reaches ``exporter``: protobuf bytes written directly for the guard's
    OTLP exporter, SDK ``ReadableSpan``\\ s (through ``light()``) for any other (console,
    in-memory, custom)."""
    if isinstance(exporter, LightOTLPSpanExporter):
        encoder = RecordEncoder(resource, scope)

        def send_bytes(batch: list[Finished]) -> bool:
            return exporter.export_bytes(encoder.records(batch), len(batch))

        return send_bytes

    def send_readable(batch: list[Finished]) -> bool:
        return exporter.export([r.light().readable(resource, scope) for r in batch]) is SpanExportResult.SUCCESS

    return send_readable


__all__ = ["Finished", "RecordEncoder", "Wired", "record_sender"]
