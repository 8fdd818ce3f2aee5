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
import time
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mcp_guard.telemetry import attributes as a
from mcp_guard.telemetry.recorder import Recorder, Upstream
from mcp_guard.telemetry.records import _SUCCESS, DecisionRecord, RequestRecord, UpstreamRecord, note_request
from mcp_guard.telemetry.spans import remote_parent

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.request import RequestContext

_perf = time.perf_counter
_time_ns = time.time_ns


# --------------------------------------------------------------------------- per host request


class RequestTrace(RequestRecord):
    """One host request: notes its SERVER span (when tracing) and its duration (when metrics are on)."""

    __slots__ = ("_perf", "_token", "req")

    def __init__(self, tel: Recorder, req: RequestContext) -> None:
        self.tel = tel
        self.req = req
        self.current = None
        self.guarded = None
        self.outcome = _SUCCESS

    def __enter__(self) -> RequestTrace:
        message = self.req.message
        method = message.get("method")
        method = self.method = method if isinstance(method, str) else "_OTHER"
        params = message.get("params")
        self.name = params.get("name") if isinstance(params, dict) else None
        traced = self.traced = self.tel.tracing
        if traced:
            meta = params.get("_meta") if isinstance(params, dict) else None
            self.uri = params.get("uri") if method in a.RESOURCE_METHODS and isinstance(params, dict) else None
            self.message_id = message.get("id")
            self.open(None, remote_parent(meta) if isinstance(meta, dict) else None)
            self.current = self
            self.req.trace = (self.trace_id, self.span_id)
            self.start = _time_ns()
        self._token = _CURRENT.set(self)
        self._perf = _perf()
        return self

    def respond(self, response: Mapping[str, Any]) -> None:
        """Note the outcome of the response about to be sent."""
        self.outcome = a.error_of(response)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        elapsed = _perf() - self._perf
        _CURRENT.reset(self._token)
        tel = self.tel
        note_request(self, self.req)
        del self.req  # the record outlives the request in the queues: not its message
        if self.traced:
            self.end = _time_ns()
            if self.sampled:
                tel.end(self)
        hist = tel.server_duration
        if hist is not None:
            hist.queue(self, elapsed, None)


_CURRENT: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("mcp_guard_request", default=None)


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

    def __enter__(self) -> DecisionSpan:
        req = self.req
        trace = self.trace = _CURRENT.get()
        prev = self.prev = trace.current if trace is not None else None
        target = req.target
        assert target is not None
        self.target = target
        self.principal = req.principal
        traced = self.traced = self.tel.tracing
        if traced:
            self.open(prev)
            self.start = _time_ns()
            req.trace = (self.trace_id, self.span_id)
            if trace is not None:
                trace.current = self
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        trace, tel, req = self.trace, self.tel, self.req
        del self.req, self.trace  # the record outlives the request in the queues: not its message
        traced = self.traced
        if traced and trace is not None:
            trace.current = self.prev
        if exc is not None:  # as the SDK's start_as_current_span ends it
            if traced:
                self.events = []
                if isinstance(exc, Exception):
                    self.failure = _exception_event(self.events, exc)
                else:
                    self.failure = None
                self.end = _time_ns()
                if self.sampled:
                    tel.end(self)
            return
        verdict = self.verdict = req.verdict
        assert verdict is not None
        self.shadow = req.shadow
        self.labels = req.session_labels
        if traced:
            self.end = self.approved_at = _time_ns()
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

    __slots__ = ("_perf",)

    def __init__(self, tel: Recorder, upstream: Upstream, method: str, params: Mapping[str, Any] | None) -> None:
        self.tel = tel
        self.upstream = upstream
        self.version = upstream.protocol_version
        self.method = method
        self.name = params.get("name") if isinstance(params, dict) else None
        self.outcome = _SUCCESS
        self.failure = None
        self.upstream_id = None
        traced = self.traced = tel.tracing
        if traced:
            trace = _CURRENT.get()
            if trace is not None:
                self.guarded = trace.guarded
                self.open(trace.current)
            else:
                self.guarded = None
                self.open(None)
            self.start = _time_ns()

    def __enter__(self) -> UpstreamCall:
        self._perf = _perf()
        return self

    def inject(self, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``params`` as sent: this span's W3C context in ``_meta``, and never a ``baggage`` the guard did not vet."""
        out = dict(params) if params else {}
        meta = out.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.pop("baggage", None)
        if self.traced:
            meta["traceparent"] = f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"
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
        self.outcome = a.error_of(response)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        elapsed = _perf() - self._perf
        if exc is not None:
            error_type = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__qualname__
            self.failure = (error_type, str(exc) or error_type)
        tel = self.tel
        if self.traced:
            self.end = _time_ns()
            if self.sampled:
                tel.end(self)
        hist = tel.client_duration
        if hist is not None:
            hist.queue(self, elapsed, None)


__all__ = ["DecisionSpan", "RequestTrace", "UpstreamCall", "current_span_ids"]
