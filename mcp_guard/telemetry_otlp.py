"""Light spans and a direct OTLP/protobuf encoder for them (the guard's traced hot path).

The SDK's span objects validate every attribute and its OTLP encoder builds a protobuf message
tree per span: together ~250 µs of CPU per guarded call.  The guard's attributes come from its own
code (already the right types), and most of them repeat call after call (principal, decision,
reason, upstream), so here a span is a slotted record and the OTLP ``ExportTraceServiceRequest`` is
written byte by byte, with the encoded ``KeyValue`` of every repeating attribute cached.

The wire format follows opentelemetry-proto (``collector/trace/v1``, ``trace/v1``, ``common/v1``,
``resource/v1``) field for field, in field-number order, exactly as the SDK encoder would write it;
``tests/telemetry/test_otlp.py`` parses the bytes with the official ``opentelemetry.proto`` classes
and compares them with the SDK encoder's output.  Other exporters (console, in-memory, any SDK
``SpanExporter``) get the same spans converted to SDK ``ReadableSpan`` on the export thread.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import SpanKind, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import TraceState
    from opentelemetry.util.types import AttributeValue

_log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")

# opentelemetry.proto.trace.v1.Span.SpanKind / Status.StatusCode / SpanFlags
_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200

_TIMES = struct.Struct("<BQBQ")  # Span.start_time_unix_nano (7, fixed64), end_time_unix_nano (8, fixed64)
_DOUBLE = struct.Struct("<Bd")  # AnyValue.double_value (4, fixed64)
_EVENT_TIME = struct.Struct("<BQ")  # Span.Event.time_unix_nano (1, fixed64)
_FLAGS = struct.Struct("<2sI")  # Span.flags (16, fixed32): tag 133 is two varint bytes
_FLAGS_TAG = b"\x85\x01"
_SMALL = [bytes([n]) for n in range(128)]
_CACHE_LIMIT = 8192
_BLOCK_LIMIT = 1024


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n] if n >= 0 else _varint(n + (1 << 64))  # int64: two's complement, 10 bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, varint length, payload."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """``common.v1.AnyValue`` (a oneof: every member is written, even a default value)."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return _DOUBLE.pack(0x21, value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"cannot encode a {type(value).__name__} attribute")


def _key_value(key: str, value: Any) -> bytes:
    """``common.v1.KeyValue``."""
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


def _attributes(tag: bytes, attrs: Mapping[str, Any] | None) -> bytes:
    return b"".join(_field(tag, _key_value(k, v)) for k, v in attrs.items()) if attrs else b""


class LightSpan:
    """One finished (or running) span of the guard: what the exporters need, nothing more.

    Attributes are written straight into ``attrs`` by the guard's own code with values that are
    already valid OTLP attribute values (str, bool, int, float or tuples of str).  ``attrs`` holds
    the ones that repeat from call to call (their encoding is cached as one block), ``unique`` the
    few that differ on every request (JSON-RPC ids, resource URIs).
    """

    __slots__ = (
        "attrs",
        "end",
        "events",
        "flags",
        "kind",
        "name",
        "parent_id",
        "parent_remote",
        "sampled",
        "span_id",
        "start",
        "status_code",
        "status_message",
        "trace_id",
        "trace_state",
        "unique",
    )

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        trace_id: int,
        span_id: int,
        parent_id: int,
        parent_remote: bool,
        sampled: bool,
        trace_state: TraceState | None,
        attrs: dict[str, AttributeValue],
        start: int,
    ) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: a root span
        self.parent_remote = parent_remote
        self.sampled = sampled
        self.flags = 1 if sampled else 0  # W3C trace flags
        self.trace_state = trace_state
        self.attrs = attrs
        self.unique: dict[str, AttributeValue] = {}
        self.start = start
        self.end = 0
        self.status_code = StatusCode.UNSET
        self.status_message: str | None = None
        self.events: list[tuple[str, int, Mapping[str, AttributeValue]]] | None = None

    def set_error(self, description: str | None) -> None:
        """``set_status(Status(ERROR, description))`` with the SDK's rule: an OK status is final."""
        if self.status_code is not StatusCode.OK:
            self.status_code = StatusCode.ERROR
            self.status_message = description if isinstance(description, str) else None

    def add_event(self, name: str, timestamp: int, attrs: Mapping[str, AttributeValue]) -> None:
        if self.events is None:
            self.events = []
        self.events.append((name, timestamp, attrs))

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        """The same span as an SDK ``ReadableSpan`` (for the console, in-memory or any SDK exporter)."""
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, Status, TraceFlags

        flags = TraceFlags(self.flags)
        context = SpanContext(self.trace_id, self.span_id, False, flags, self.trace_state)
        parent = (SpanContext(self.trace_id, self.parent_id, self.parent_remote, flags, self.trace_state)
                  if self.parent_id else None)
        events = tuple(Event(name, BoundedAttributes(attributes=attrs, immutable=True), ts)
                       for name, ts, attrs in self.events or ())
        return ReadableSpan(
            self.name,
            context=context,
            parent=parent,
            resource=resource,
            attributes=BoundedAttributes(attributes={**self.attrs, **self.unique}, immutable=True),
            events=events,
            kind=self.kind,
            status=Status(self.status_code, self.status_message),
            start_time=self.start,
            end_time=self.end,
            instrumentation_scope=scope,
        )


class SpanEncoder:
    """Writes ``ExportTraceServiceRequest`` bytes for light spans of one resource and scope.

    Repeating attributes are encoded once: ``KeyValue`` field bytes are cached per (key, value,
    type), except for keys whose values are unique per request (``uncached``).  The cache is
    cleared when it grows past a bound, so a stream of distinct values cannot grow it forever.
    """

    def __init__(self, resource: Resource, scope: InstrumentationScope, uncached: Iterable[str] = ()) -> None:
        self._resource = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))  # ResourceSpans.resource
        self._resource_tail = _field(b"\x1a", resource.schema_url.encode()) if resource.schema_url else b""
        scope_msg = _field(b"\x0a", scope.name.encode()) + (_field(b"\x12", scope.version.encode()) if scope.version else b"")
        scope_msg += _attributes(b"\x1a", scope.attributes)
        self._scope = _field(b"\x0a", scope_msg)  # ScopeSpans.scope
        self._scope_tail = _field(b"\x1a", scope.schema_url.encode()) if scope.schema_url else b""
        self._uncached = frozenset(uncached)
        self._blocks: dict[tuple[tuple[str, ...], tuple[Any, ...]], bytes] = {}
        self._attr_cache: dict[Any, dict[Any, bytes]] = {}
        self._cached = 0
        self._name_cache: dict[str, bytes] = {}

    def _attrs(self, tag: bytes, attrs: Mapping[str, Any]) -> list[bytes]:
        cache = self._attr_cache
        out = []
        for key, value in attrs.items():
            # key -> value -> bytes (no tuple to build per lookup); a bool gets its own table, as
            # True == 1 would otherwise find an int's bytes
            per_key = cache.get(key if value.__class__ is not bool else (key, bool))
            encoded = per_key.get(value) if per_key is not None else None
            if encoded is None:
                encoded = _field(tag, _key_value(key, value))
                if key not in self._uncached:
                    self._remember(key if value.__class__ is not bool else (key, bool), value, encoded, per_key)
            out.append(encoded)
        return out

    def _block(self, attrs: Mapping[str, Any]) -> bytes:
        """All of a span's repeating attributes, encoded once per distinct set."""
        try:
            sig = (tuple(attrs), tuple(attrs.values()))
            block = self._blocks.get(sig)
        except TypeError:  # an unhashable value: encode it as it is
            return b"".join(self._attrs(b"\x4a", attrs))
        if block is None:
            if len(self._blocks) >= _BLOCK_LIMIT:
                self._blocks.clear()
            block = self._blocks[sig] = b"".join(self._attrs(b"\x4a", attrs))
        return block

    def _remember(self, key: Any, value: Any, encoded: bytes, per_key: dict[Any, bytes] | None) -> None:
        if self._cached >= _CACHE_LIMIT:
            self._attr_cache.clear()
            self._cached = 0
            per_key = None
        if per_key is None:
            per_key = self._attr_cache[key] = {}
        per_key[value] = encoded
        self._cached += 1

    def span(self, s: LightSpan) -> bytes:
        """``trace.v1.Span`` (without its field tag)."""
        parts = [b"\x0a\x10", s.trace_id.to_bytes(16, "big"), b"\x12\x08", s.span_id.to_bytes(8, "big")]
        if s.trace_state:
            parts.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in s.trace_state.items()).encode()))
        if s.parent_id:
            parts.append(b"\x22\x08")
            parts.append(s.parent_id.to_bytes(8, "big"))
        name = self._name_cache.get(s.name)
        if name is None:
            if len(self._name_cache) >= _CACHE_LIMIT:
                self._name_cache.clear()
            name = self._name_cache[s.name] = _field(b"\x2a", s.name.encode("utf-8")) + b"\x30" + _SMALL[_KIND[s.kind]]
        parts.append(name)
        parts.append(_TIMES.pack(0x39, s.start, 0x41, s.end))
        if s.attrs:
            parts.append(self._block(s.attrs))
        if s.unique:
            parts += [_field(b"\x4a", _key_value(k, v)) for k, v in s.unique.items()]
        if s.events:
            for ev_name, ts, ev_attrs in s.events:
                event = _EVENT_TIME.pack(0x09, ts) + _field(b"\x12", ev_name.encode("utf-8")) + _attributes(b"\x1a", ev_attrs)
                parts.append(_field(b"\x5a", event))
        # the SDK always writes Status, even when unset
        if s.status_code is StatusCode.UNSET:
            parts.append(b"\x7a\x00")
        else:
            status = (_field(b"\x12", s.status_message.encode("utf-8")) if s.status_message else b"")
            status += b"\x18" + _SMALL[s.status_code.value]
            parts.append(_field(b"\x7a", status))
        parts.append(_FLAGS.pack(_FLAGS_TAG, _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if s.parent_remote else 0)))
        return b"".join(parts)

    def request(self, spans: Sequence[LightSpan]) -> bytes:
        """``collector.trace.v1.ExportTraceServiceRequest`` holding ``spans``."""
        body = b"".join([_field(b"\x12", self.span(s)) for s in spans])
        scope_spans = _field(b"\x12", self._scope + body + self._scope_tail)  # ResourceSpans.scope_spans
        return _field(b"\x0a", self._resource + scope_spans + self._resource_tail)


class LightOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter (endpoint, headers, TLS, compression, retries and time-out
    from the same arguments and ``OTEL_EXPORTER_OTLP_*`` variables), fed bytes from ``SpanEncoder``."""

    def export_bytes(self, data: bytes, count: int) -> bool:
        """POST one encoded request of ``count`` spans; False when the collector is down, slow or
        refuses it (the SDK's own ``export`` minus its encoder)."""
        if self._shutdown:
            return False
        with self._metrics.export_operation(count) as result:
            if 0 < self._max_request_size < len(data):
                _log.warning("Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                             len(data), self._max_request_size)
                result.error = ValueError("request too large")
                return False
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                return False
        return True


__all__ = ["LightOTLPSpanExporter", "LightSpan", "SpanEncoder"]
