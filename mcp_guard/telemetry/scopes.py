"""The scope of one host request, one decision and one upstream request: each a context manager
that notes its span's ids and times and its outcome on the event loop, and hands its record
(``records``) to the export threads when it ends, whatever happened inside.  Attribute sets,
encoding and export happen on those threads only (``records`` says how).

The CLIENT span of an upstream request must find the span of the host request it serves, yet
``Upstream.call`` is reached from many places that do not carry the request: that one link is a
context variable (``_CURRENT``), which asyncio copies into each request's task, so it is per
request, never shared between requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mcp_guard.jsonrpc import Era
from mcp_guard.telemetry import attributes as a
from mcp_guard.telemetry.recorder import Recorder, Upstream
from mcp_guard.telemetry.records import _SUCCESS, DecisionRecord, RequestRecord, UpstreamRecord, _new_id
from mcp_guard.telemetry.spans import remote_parent

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.request import RequestContext

_perf_ns = time.perf_counter_ns
_time_ns = time.time_ns
_getrandbits = random.getrandbits
_LOW64 = (1 << 64) - 1
_LEGACY = Era.LEGACY  # bound once: an enum member read through its class costs a slow attribute hook on 3.11
_FLAGS_HEX = ("-00", "-01")  # the traceparent's trace-flags: unsampled, sampled


# --------------------------------------------------------------------------- per host request


class RequestTrace(RequestRecord):
    """One host request: notes its SERVER span (when tracing) and its duration (when metrics are on).

    Its times are one clock: the wall clock read once as it starts (its span's start), every later
    time the monotonic clock's distance from that start (``_offset`` turns one into the other, as
    OpenTelemetry's anchored clocks do), so a duration is never negative and each later time is
    one clock read, not two.  Its decision and upstream calls take their times the same way."""

    __slots__ = ("_mono", "_offset", "_token", "req")

    def __init__(self, tel: Recorder, req: RequestContext) -> None:
        self.tel = tel
        self.req = req
        self.guarded = None
        self.outcome = _SUCCESS
        message = req.message
        method = message.get("method")
        method = self.method = method if isinstance(method, str) else "_OTHER"
        params = message.get("params")
        if not isinstance(params, dict):
            params = _NO_PARAMS
        self.name = params.get("name")
        if tel.tracing:
            self.traced = True
            self.uri = params.get("uri") if method in a.RESOURCE_METHODS else None
            self.message_id = message.get("id")
            meta = params.get("_meta")
            if meta is None and tel.sampler is None:  # a root span, sampled: the default sampler, inline
                ids = _getrandbits(192)  # the trace id and this span's id in one draw
                self.trace_id = ids >> 64 or _new_id(128)
                self.span_id = ids & _LOW64 or _new_id(64)
                self.parent_id = 0
                self.sampled = True
                self.state = None
                self.remote = False
            else:
                self.open(None, remote_parent(meta) if isinstance(meta, dict) else None)
            self.current = self
            req.trace = (self.trace_id, self.span_id)
            start = self.start = _time_ns()
            mono = self._mono = _perf_ns()
            self._offset = start - mono
        else:
            self.traced = False
            self.current = None
            self._mono = _perf_ns()
        self._token = _CURRENT.set(self)

    def __enter__(self) -> RequestTrace:
        return self

    def respond(self, response: Mapping[str, Any]) -> None:
        """Note the outcome of the response about to be sent."""
        res = response.get("result")  # the common answer, a result that is no tool error, told inline
        if res.__class__ is not dict or res.get("isError") is True or "error" in response:
            self.outcome = a.error_of(response)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        mono = _perf_ns()
        _CURRENT.reset(self._token)
        del self._token  # the task's context: not kept with the record
        tel, req = self.tel, self.req
        # what the SERVER span and the duration read of the request record, noted as it ends
        self.version = req.protocol_version
        self.session = req.session_id if req.era is _LEGACY else None
        self.listed = req.tools_listed
        self.principal = req.principal
        del self.req  # the record outlives the request in the queues: not its message
        if self.traced:
            self.current = None  # no cycle: the record is freed as soon as the queues let it go
            self.end = self._offset + mono
            if self.sampled:
                tel.end(self)
        hist = tel.server_duration
        if hist is not None:
            hist.queue(self, (mono - self._mono) / 1e9, None)


_CURRENT: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("mcp_guard_request", default=None)
_NO_PARAMS: Mapping[str, Any] = {}


def current_span_ids() -> tuple[int, int] | None:
    """(trace id, span id) of the span the current request is in (its decision's while deciding),
    for log lines; None outside a traced request."""
    trace = _CURRENT.get()
    span = trace.current if trace is not None else None
    return (span.trace_id, span.span_id) if span is not None else None


# --------------------------------------------------------------------------- per decision


class DecisionSpan(DecisionRecord):
    """The ``run_guardrail mcp-guard`` span of one decision (the same for a tool, a resource or a
    prompt) and its count; reads ``req.target`` on entry and ``req.verdict`` on exit."""

    __slots__ = ("prev", "req", "trace")

    def __init__(self, tel: Recorder, req: RequestContext) -> None:
        self.tel = tel
        self.req = req
        self.events = self._guarded = self._who = None
        trace = self.trace = _CURRENT.get()
        target = req.target
        assert target is not None
        self.target = target
        self.principal = req.principal
        if tel.tracing:
            self.traced = True
            prev = self.prev = trace.current if trace is not None else None
            if prev is not None:  # under the request's span (or the decision it is in): its trace, its sampling
                self.trace_id, self.parent_id, self.sampled, self.state = prev.trace_id, prev.span_id, prev.sampled, prev.state
                self.remote = False
                self.span_id = _getrandbits(64) or _new_id(64)
                self.start = trace._offset + _perf_ns()  # type: ignore[union-attr]
                trace.current = self  # type: ignore[union-attr]
            else:
                self.open(None)
                self.start = _time_ns()
            req.trace = (self.trace_id, self.span_id)
        else:
            self.traced = False
            self.prev = None

    def __enter__(self) -> DecisionSpan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        trace, tel, req = self.trace, self.tel, self.req
        traced = self.traced
        if traced:
            prev = self.prev
            if prev is not None:
                end = trace._offset + _perf_ns()  # type: ignore[union-attr]
                trace.current = prev  # type: ignore[union-attr]
                self.prev = None  # no cycle through the request's record
            else:
                end = _time_ns()
        del self.req, self.trace  # the record outlives the request in the queues: not its message
        if exc is not None:  # as the SDK's start_as_current_span ends it
            if traced:
                self.events = []
                if isinstance(exc, Exception):
                    self.failure = _exception_event(self.events, exc)
                else:
                    self.failure = None
                self.end = end
                if self.sampled:
                    tel.end(self)
            return
        verdict = self.verdict = req.verdict
        assert verdict is not None
        self.shadow = req.shadow
        self.labels = req.session_labels
        if traced:
            self.end = self.approved_at = end
            if trace is not None:
                trace.guarded = self
            if self.sampled:
                tel.end(self)
        counter = tel.decisions
        if counter is not None:
            counter.queue(self, 1, None)


def _exception_event(events: list[tuple[str, int, Mapping[str, AttributeValue]]], exc: BaseException) -> str:
    """The SDK's ``record_exception`` event (noted on the loop: the traceback is gone afterwards)
    and the error status's description."""
    module = type(exc).__module__
    qualname = type(exc).__qualname__
    events.append(("exception", _time_ns(), {
        "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(exc)),
        "exception.escaped": "False",
    }))
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- per upstream request


class UpstreamCall(UpstreamRecord):
    """One request to an upstream: notes its CLIENT span (its context goes into ``params._meta``) and duration."""

    __slots__ = ("_mono", "_offset")

    def __init__(self, tel: Recorder, upstream: Upstream, method: str, params: Mapping[str, Any] | None) -> None:
        self.tel = tel
        self.upstream = upstream
        self.version = upstream.protocol_version
        self.method = method
        self.name = params.get("name") if isinstance(params, dict) else None
        self.outcome = _SUCCESS
        self.failure = None
        self.upstream_id = None
        if tel.tracing:
            self.traced = True
            trace = _CURRENT.get()
            parent = trace.current if trace is not None else None
            if parent is not None:
                self.guarded = trace.guarded  # type: ignore[union-attr]
                self.trace_id, self.parent_id, self.sampled, self.state = parent.trace_id, parent.span_id, parent.sampled, parent.state
                self.remote = False
                self.span_id = _getrandbits(64) or _new_id(64)
                offset = self._offset = trace._offset  # type: ignore[union-attr]
                mono = self._mono = _perf_ns()
                self.start = offset + mono
                return
            self.guarded = None
            self.open(None)
            start = self.start = _time_ns()
            mono = self._mono = _perf_ns()
            self._offset = start - mono
        else:
            self.traced = False
            self._mono = _perf_ns()

    def __enter__(self) -> UpstreamCall:
        return self

    def inject(self, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``params`` as sent: this span's W3C context in ``_meta``, and never a ``baggage`` the guard did not vet."""
        out = dict(params) if params else {}
        meta = out.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.pop("baggage", None)
        if self.traced:
            meta["traceparent"] = f"00-{self.trace_id.to_bytes(16).hex()}-{self.span_id.to_bytes(8).hex()}{_FLAGS_HEX[self.sampled]}"
            if self.state:
                meta["tracestate"] = self.state.to_header()
        if meta:
            out["_meta"] = meta
        return out or None

    def noting(self, on_id: Callable[[int], None] | None) -> Callable[[int], None] | None:
        """``on_id`` that also notes the upstream's JSON-RPC id on the span."""
        if not self.traced:
            return on_id
        self.on_id = on_id
        return self._noted

    def _noted(self, request_id: int) -> None:
        self.upstream_id = request_id
        if self.on_id is not None:
            self.on_id(request_id)

    def respond(self, response: Mapping[str, Any]) -> None:
        """Note the outcome of the upstream's response."""
        res = response.get("result")  # as ``RequestTrace.respond``
        if res.__class__ is not dict or res.get("isError") is True or "error" in response:
            self.outcome = a.error_of(response)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        mono = _perf_ns()
        if exc is not None:
            error_type = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__qualname__
            self.failure = (error_type, str(exc) or error_type)
        tel = self.tel
        if self.traced:
            self.end = self._offset + mono
            if self.sampled:
                tel.end(self)
        hist = tel.client_duration
        if hist is not None:
            hist.queue(self, (mono - self._mono) / 1e9, None)


__all__ = ["DecisionSpan", "RequestTrace", "UpstreamCall", "current_span_ids"]
