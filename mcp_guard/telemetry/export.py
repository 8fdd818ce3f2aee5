"""Getting finished spans out of the process: the direct OTLP/protobuf encoder and the export thread.

The SDK's OTLP encoder builds a protobuf message tree per span.  The guard's span attributes come
from its own code (already the right types) and most repeat call after call (principal, decision,
reason, upstream), so here the ``ExportTraceServiceRequest`` is written byte by byte, with the
encoded ``KeyValue`` of every repeating attribute cached.  The wire format follows
opentelemetry-proto (``collector/trace/v1``, ``trace/v1``, ``common/v1``, ``resource/v1``) field
for field, in field-number order, exactly as the SDK encoder writes it;
``tests/telemetry/test_otlp.py`` parses the bytes with the official ``opentelemetry.proto`` classes
and compares them with the SDK encoder's output.  Any other exporter (console, the SDK's in-memory
one in tests, any ``SpanExporter``) gets the same spans as SDK ``ReadableSpan`` objects, converted
on the export thread.

Export runs on a daemon thread behind a bounded queue with a short time-out: a dead or slow
collector drops spans (counted, logged at most every 30 s) and never delays or fails a call.
"""

from __future__ import annotations

import collections
import logging
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mcp_guard.telemetry.settings import (
    DEFAULT_BATCH,
    DEFAULT_DELAY,
    DEFAULT_EXPORT_TIMEOUT,
    DEFAULT_QUEUE,
    Settings,
)
from mcp_guard.telemetry.transport import lean_transport

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from mcp_guard.telemetry.spans import LightSpan

log = logging.getLogger("mcp_guard.telemetry")
_log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
_LOG_EVERY = 30.0

# opentelemetry.proto.trace.v1.Span.SpanKind / Status.StatusCode / SpanFlags
_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200

_TIMES = struct.Struct("<BQBQ")  # Span.start_time_unix_nano (7, fixed64), end_time_unix_nano (8, fixed64)
_DOUBLE = struct.Struct("<Bd")  # AnyValue.double_value (4, fixed64)
_EVENT_TIME = struct.Struct("<BQ")  # Span.Event.time_unix_nano (1, fixed64)
_FLAGS = struct.Struct("<2sI")  # Span.flags (16, fixed32): tag 133 is two varint bytes
_FLAGS_TAG = b"\x85\x01"
_IDS = struct.Struct(">2sQQ2sQ")  # Span.trace_id (1, 16 bytes), Span.span_id (2, 8 bytes), big-endian
_PARENT = struct.Struct(">2sQ")  # Span.parent_span_id (4, 8 bytes)
_LOW64 = (1 << 64) - 1
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
        self._by_id: dict[int, tuple[Mapping[str, Any], bytes]] = {}
        self._unique_keys: dict[str, bytes] = {}
        self._attr_cache: dict[Any, dict[Any, bytes]] = {}
        self._cached = 0
        self._name_cache: dict[tuple[str, SpanKind], bytes] = {}

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
        """All of a span's repeating attributes, encoded once per distinct set: found by the
        dict's identity first (the guard shares one dict per set between spans, and a span's
        attributes never change once it has ended), else by its keys and values."""
        known = self._by_id.get(id(attrs))
        if known is not None and known[0] is attrs:
            return known[1]
        block = self._block_of(attrs)
        if len(self._by_id) >= _BLOCK_LIMIT:
            self._by_id.clear()
        self._by_id[id(attrs)] = (attrs, block)  # holding the dict keeps its id from being reused
        return block

    def _block_of(self, attrs: Mapping[str, Any]) -> bytes:
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

    def _unique(self, key: str, value: Any) -> bytes:
        """One attribute whose value differs on every span (a JSON-RPC id, a URI): for a string,
        the key's bytes come from a cache and the value is framed inline (the same bytes as
        ``_field(b"\\x4a", _key_value(key, value))``)."""
        if value.__class__ is not str:
            return _field(b"\x4a", _key_value(key, value))
        head = self._unique_keys.get(key)
        if head is None:
            head = self._unique_keys[key] = _field(b"\x0a", key.encode("utf-8")) + b"\x12"
        raw = value.encode("utf-8")
        n = len(raw)
        any_value = (b"\x0a" + _SMALL[n] + raw) if n < 0x80 else _field(b"\x0a", raw)
        m = len(any_value)
        kv = head + (_SMALL[m] if m < 0x80 else _varint(m)) + any_value
        k = len(kv)
        return b"\x4a" + (_SMALL[k] if k < 0x80 else _varint(k)) + kv

    def span(self, s: LightSpan) -> bytes:
        """``trace.v1.Span`` (without its field tag)."""
        trace_id = s.trace_id
        parts = [_IDS.pack(b"\x0a\x10", trace_id >> 64, trace_id & _LOW64, b"\x12\x08", s.span_id)]
        if s.trace_state:
            parts.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in s.trace_state.items()).encode()))
        if s.parent_id:
            parts.append(_PARENT.pack(b"\x22\x08", s.parent_id))
        name = self._name_cache.get((s.name, s.kind))  # a SERVER and a CLIENT span may share a name
        if name is None:
            if len(self._name_cache) >= _CACHE_LIMIT:
                self._name_cache.clear()
            name = self._name_cache[(s.name, s.kind)] = _field(b"\x2a", s.name.encode("utf-8")) + b"\x30" + _SMALL[_KIND[s.kind]]
        parts.append(name)
        parts.append(_TIMES.pack(0x39, s.start, 0x41, s.end))
        if s.attrs:
            parts.append(self._block(s.attrs))
        if s.unique:
            parts += [self._unique(k, v) for k, v in s.unique.items()]
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



# --------------------------------------------------------------------------- the export thread


Item = TypeVar("Item")


class BoundedBatchProcessor(Generic[Item]):
    """Batches ended spans (or what they are made from) to an exporter on a daemon thread; never
    blocks the caller.

    ``on_end`` only appends to a bounded deque (the guard's event loop must never wait on a
    collector); when the queue is full the span is dropped and counted.  Failed exports count as
    dropped too.  Both are logged at most every 30 s with the running totals.  ``export`` sends one
    batch and says whether the collector took it; ``close`` shuts the exporter down.
    """

    def __init__(
        self,
        export: Callable[[list[Item]], bool],
        close: Callable[[], object],
        *,
        max_queue_size: int = DEFAULT_QUEUE,
        max_batch_size: int = DEFAULT_BATCH,
        schedule_delay: float = DEFAULT_DELAY,
    ) -> None:
        self._export = export
        self._close = close
        self._max_queue = max_queue_size
        self._max_batch = min(max_batch_size, max_queue_size)
        self._delay = schedule_delay
        self._queue: collections.deque[Item] = collections.deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self.dropped = 0  # queue full
        self.failed = 0  # export failed (collector down, rejected, timed out)
        self.exported = 0
        self._last_log = 0.0
        self._logged = (0, 0)
        self._thread = threading.Thread(target=self._run, name="mcp-guard-span-export", daemon=True)
        self._thread.start()

    def on_end(self, span: Item) -> None:
        if self._stopped:
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            self._maybe_log()
            return
        queue.append(span)
        if len(queue) == self._max_batch:  # once per batch: Event.set costs a lock and a notify
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._export_all(flush=False)

    def _export_all(self, deadline: float | None = None, *, flush: bool = True) -> bool:
        """Export what is queued; the timer (``flush=False``) sends one batch, then only full ones,
        so a busy guard ships few large requests instead of a stream of small ones."""
        with self._export_lock:
            first = True
            while self._queue and (flush or first or len(self._queue) >= self._max_batch):
                first = False
                if deadline is not None and time.monotonic() > deadline:
                    return False
                batch: list[Item] = []
                while self._queue and len(batch) < self._max_batch:
                    batch.append(self._queue.popleft())
                try:
                    ok = self._export(batch)
                except Exception:  # an exporter bug must not kill the export thread
                    log.debug("span export failed", exc_info=True)
                    ok = False
                if ok:
                    self.exported += len(batch)
                else:
                    self.failed += len(batch)
                    self._maybe_log()
        return True

    def _maybe_log(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if (self.dropped, self.failed) == self._logged or (now - self._last_log < _LOG_EVERY and not final):
            return
        self._last_log = now
        self._logged = (self.dropped, self.failed)
        log.warning(
            "telemetry: %d spans could not be exported and %d were dropped because the queue (%d) was full "
            "since start; is the collector reachable? Tool calls are not affected",
            self.failed,
            self.dropped,
            self._max_queue,
        )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._export_all(time.monotonic() + timeout_millis / 1000)

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(DEFAULT_EXPORT_TIMEOUT)
        self._export_all(time.monotonic() + DEFAULT_EXPORT_TIMEOUT)
        self._close()
        self._maybe_log(final=True)


class Throttle(logging.Filter):
    """At most one record per 30 s from the OTLP exporters (they log every failed batch)."""

    def __init__(self) -> None:
        super().__init__()
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < _LOG_EVERY:
            return False
        self._last = now
        return True


NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk.metrics._internal.export",
)



def span_exporter(settings: Settings) -> SpanExporter | None:
    """The exporter ``settings`` name for traces (None: traces off)."""
    if settings.traces == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)  # stdout is the MCP stream
    if settings.traces == "otlp":
        return LightOTLPSpanExporter(endpoint=settings.traces_endpoint, timeout=settings.timeout,
                                     **lean_transport(settings.traces_endpoint, settings.plain_http))
    return None


__all__ = ["BoundedBatchProcessor", "LightOTLPSpanExporter", "SpanEncoder", "Throttle", "span_exporter"]
