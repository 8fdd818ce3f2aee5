"""Spans as the guard makes them: light records, W3C trace context in and out, ids and sampling.

The SDK's span objects validate every attribute on every call; the guard's attributes come from its
own code (already valid OTLP values), so a span here is a slotted record (``LightSpan``) that
``export`` encodes directly; the export thread makes it from a scope's record (``records``, which
also takes the ids: under a parent of the same request or under the host's remote context, the
``traceparent``/``tracestate`` of ``params._meta``, sampled as the configured sampler says).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, StatusCode, TraceState

from mcp_guard.telemetry.settings import DEFAULT_SAMPLER

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.util.types import AttributeValue


class LightSpan:
    """One finished (or running) span of the guard: what the exporters need, nothing more.

    Attributes are written straight into ``attrs`` by the guard's own code with values that are
    already valid OTLP attribute values (str, bool, int, float or tuples of str).  ``attrs`` may be
    a dict shared with other spans (the guard builds each attribute set once): it is replaced, never
    changed in place, unless it is the span's own copy, and it never changes once the span ended.  ``attrs`` holds
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


# W3C traceparent, exactly as the SDK's TraceContextTextMapPropagator reads it
_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACESTATE_MAX = 512
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16

RemoteParent = tuple[int, int, bool, "TraceState | None"]


def remote_parent(meta: Mapping[str, Any]) -> RemoteParent | None:
    """(trace id, span id, sampled, trace state) from the host's ``_meta``, or None."""
    header = meta.get("traceparent")
    if not isinstance(header, str) or not header or len(header) > 512:
        return None
    match = _TRACEPARENT.fullmatch(header)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == _NO_TRACE or span_id == _NO_SPAN or (version == "00" and rest) or version == "ff":
        return None
    state = None
    ts = meta.get("tracestate")
    if isinstance(ts, str) and len(ts) <= _TRACESTATE_MAX:
        state = TraceState.from_header([ts])
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1), state


def traceparent(span: LightSpan) -> str:
    """The W3C ``traceparent`` header naming ``span``."""
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.flags:02x}"


def sampler(name: str, arg: str) -> Sampler | None:
    """The SDK sampler ``OTEL_TRACES_SAMPLER``/``_ARG`` name, or None for the default (parent-based,
    always on), which ``records`` applies inline; as the SDK reads them, an unknown name falls
    back to the default and an unreadable ratio to 1.0."""
    if name in ("", DEFAULT_SAMPLER):
        return None
    from opentelemetry.sdk.trace import sampling

    known: Mapping[str, Any] = sampling._KNOWN_SAMPLERS  # the table the SDK's own env reader uses
    if name not in known:
        return None
    if name.endswith("traceidratio"):
        try:
            rate = float(arg)
        except ValueError:
            rate = 1.0
        made: Sampler = known[name](rate)
        return made
    found: Sampler = known[name]
    return found


__all__ = ["LightSpan", "RemoteParent", "remote_parent", "sampler", "traceparent"]
