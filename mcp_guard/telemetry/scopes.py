"""The scope of one host request, one decision and one upstream request: each a context manager
that opens its span, measures its duration and closes both on exit, whatever happened inside.

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

from opentelemetry.trace import SpanKind

from mcp_guard.jsonrpc import Era
from mcp_guard.telemetry import attributes as a
from mcp_guard.telemetry.recorder import CACHE_LIMIT, Recorder, Upstream
from mcp_guard.telemetry.spans import LightSpan, remote_parent, traceparent

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.request import RequestContext

_NONE: Mapping[str, AttributeValue] = {}
_perf = time.perf_counter


# --------------------------------------------------------------------------- per host request


class RequestTrace:
    """One host request: its SERVER span (None when only metrics are on) and what its child spans share."""

    __slots__ = ("_token", "current", "error_type", "guarded", "method", "req", "span", "start", "target", "target_attr", "tel")

    def __init__(self, tel: Recorder, req: RequestContext) -> None:
        self.tel = tel
        self.req = req
        self.span: LightSpan | None = None
        self.current: LightSpan | None = None  # the parent of spans started now (the guardrail span during a decision)
        self.error_type: str | None = None
        self.guarded: Mapping[str, AttributeValue] = {}  # principal + decision, for the request's later spans

    def __enter__(self) -> RequestTrace:
        message = self.req.message
        method = message.get("method")
        method = self.method = method if isinstance(method, str) else "_OTHER"
        params = message.get("params")
        target_attr, target = self.target_attr, self.target = a.target_of(method, params)
        tel = self.tel
        if tel.tracing:
            meta = params.get("_meta") if isinstance(params, dict) else None
            remote = remote_parent(meta) if isinstance(meta, dict) else None
            uri: Any = None
            if target is None and method in a.RESOURCE_METHODS and isinstance(params, dict):
                uri = params.get("uri")
            span = self.span = self.current = tel.spans.start(f"{method} {target}" if target else method, SpanKind.SERVER,
                                                              tel.server_start(method, target_attr, target), None, remote)
            span.unique[a.JSONRPC_REQUEST_ID] = str(message.get("id"))
            if isinstance(uri, str):
                span.unique[a.MCP_RESOURCE_URI] = uri
            self.req.trace = (span.trace_id, span.span_id)
        self._token = _CURRENT.set(self)
        self.start = _perf()
        return self

    def respond(self, response: Mapping[str, Any]) -> None:
        """Mark the SERVER span with the outcome of the response about to be sent."""
        self.error_type = _outcome(self.span, response)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        elapsed = _perf() - self.start
        _CURRENT.reset(self._token)
        req = self.req
        version = req.protocol_version
        method = self.method
        span = self.span
        tel = self.tel
        if span is not None:
            if span.sampled:
                who = self.guarded or (a.principal_attributes(req.principal) if method not in a.UNGUARDED else _NONE)
                tel.server_end(span, version, req.session_id if req.era == Era.LEGACY else None, req.tools_listed, who,
                               private=self.error_type is not None)
            tel.spans.end(span)
        hist = tel.server_duration
        if hist is not None:
            error_type, target_attr, target = self.error_type, self.target_attr, self.target
            hist.record((method, version, target_attr, target, error_type), elapsed,
                        lambda: a.server_metric(method, version, target_attr, target, error_type))


_CURRENT: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("mcp_guard_request", default=None)


def current_span_ids() -> tuple[int, int] | None:
    """(trace id, span id) of the span the current request is in (its decision's while deciding),
    for log lines; None outside a traced request."""
    trace = _CURRENT.get()
    span = trace.current if trace is not None else None
    return (span.trace_id, span.span_id) if span is not None else None


# --------------------------------------------------------------------------- per decision


class DecisionSpan:
    """The ``run_guardrail mcp-guard`` span of one decision (the same for a tool, a resource or a
    prompt) and its count; reads ``req.target`` on entry and ``req.verdict`` on exit."""

    __slots__ = ("ident", "prev", "req", "span", "tel", "trace")

    def __init__(self, tel: Recorder, req: RequestContext) -> None:
        self.tel = tel
        self.req = req
        self.span: LightSpan | None = None

    def __enter__(self) -> DecisionSpan:
        tel, req = self.tel, self.req
        trace = self.trace = _CURRENT.get()
        self.prev = trace.current if trace is not None else None
        if tel.tracing:
            target = req.target
            assert target is not None
            who = req.principal
            ident = self.ident = a.principal_attributes(who)
            key = (target.qualified, target.kind, who.verified, id(ident))
            base = tel.guardrail_base.get(key)
            if base is None or base[0] is not ident:
                if len(tel.guardrail_base) >= CACHE_LIMIT:
                    tel.guardrail_base.clear()
                base = tel.guardrail_base[key] = (ident, {
                    **a.GUARDRAIL_FIXED,
                    a.GUARDRAIL_TARGET_SUBTYPE: a.SUBTYPE.get(target.kind, "tool_call"),
                    a.GUARDRAIL_TARGET_ID: a.text(target.qualified),
                    a.PRINCIPAL_VERIFIED: bool(who.verified),
                    **ident,
                })
            span = self.span = tel.spans.start(a.GUARDRAIL_SPAN, SpanKind.INTERNAL, base[1], self.prev)
            req.trace = (span.trace_id, span.span_id)
            if trace is not None:
                trace.current = span
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        span, trace, tel, req = self.span, self.trace, self.tel, self.req
        if span is not None and trace is not None:
            trace.current = self.prev
        if exc is not None:  # as the SDK's start_as_current_span ends it
            if span is not None:
                if isinstance(exc, Exception):
                    _record_exception(span, exc)
                tel.spans.end(span)
            return
        verdict, target = req.verdict, req.target
        assert verdict is not None and target is not None
        decided, outcome = a.decided(verdict.decision, tuple(verdict.policy_ids), tuple(verdict.rule_ids), verdict.reason,
                                     target.upstream, verdict.approver)
        if req.session_labels is not None:  # the flow step ran: the labels the session held when decided
            labels: Mapping[str, AttributeValue] = {a.SESSION_LABELS: tuple(sorted(req.session_labels))}
            decided, outcome = {**decided, **labels}, {**outcome, **labels}
        if span is not None:
            span.attrs = tel.merged(span.attrs, outcome)
            if req.shadow is not None:  # a copy: the merged set is shared
                span.attrs = {**span.attrs, a.SHADOW_DECISION: str(req.shadow.decision)}
            if verdict.decision in ("approved", "rejected"):
                event: dict[str, AttributeValue] = {a.DECISION: decided[a.DECISION]}
                if verdict.approver:
                    event[a.APPROVER] = a.text(verdict.approver)
                span.add_event(a.APPROVAL_EVENT, time.time_ns(), event)
            if trace is not None:
                trace.guarded = tel.merged(self.ident, decided)
            tel.spans.end(span)
        if tel.decisions is not None:
            d, u, t, k = str(verdict.decision), target.upstream, target.exposed, target.kind
            name_attr = a.NAME_ATTR.get(k)  # never a resource URI in a metric
            tel.decisions.add((d, u, t, k), 1, lambda: {a.DECISION: d, a.UPSTREAM: a.text(u), **({name_attr: a.text(t)} if name_attr else {})})


def _outcome(span: LightSpan | None, response: Mapping[str, Any]) -> str | None:
    """The ``error.type`` of a JSON-RPC response (None: success), also set on ``span``."""
    error_type, code, description = a.error_of(response)
    if error_type is not None and span is not None:
        attrs = span.attrs = dict(span.attrs)  # attribute sets are shared between spans: copy, then mark
        attrs[a.ERROR_TYPE] = error_type
        if code is not None:
            attrs[a.RPC_RESPONSE_STATUS_CODE] = code
        span.set_error(description)
    return error_type


def _record_exception(span: LightSpan, exc: BaseException) -> None:
    module = type(exc).__module__
    qualname = type(exc).__qualname__
    span.add_event("exception", time.time_ns(), {
        "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(exc)),
        "exception.escaped": "False",
    })
    span.set_error(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- per upstream request


class UpstreamCall:
    """One request to an upstream: its CLIENT span (its context goes into ``params._meta``) and duration."""

    __slots__ = ("ckey", "error_type", "metric", "span", "start", "tel")

    def __init__(self, tel: Recorder, upstream: Upstream, method: str, params: Mapping[str, Any] | None) -> None:
        self.tel = tel
        target_attr, target = a.target_of(method, params)
        self.ckey, base, self.metric = tel.client_attrs(upstream, method, target_attr, target)
        self.span: LightSpan | None = None
        self.error_type: str | None = None
        if tel.tracing:
            trace = _CURRENT.get()
            attrs = tel.merged(base, trace.guarded) if trace is not None and trace.guarded else base
            self.span = tel.spans.start(f"{method} {target}" if target else method, SpanKind.CLIENT, attrs,  # type: ignore[arg-type]
                                        trace.current if trace is not None else None)

    def __enter__(self) -> UpstreamCall:
        self.start = _perf()
        return self

    def inject(self, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``params`` as sent: this span's W3C context in ``_meta``, and never a ``baggage`` the guard did not vet."""
        out = dict(params) if params else {}
        meta = out.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.pop("baggage", None)
        span = self.span
        if span is not None:
            meta["traceparent"] = traceparent(span)
            if span.trace_state:
                meta["tracestate"] = span.trace_state.to_header()
        if meta:
            out["_meta"] = meta
        return out or None

    def noting(self, on_id: Callable[[int], None] | None) -> Callable[[int], None] | None:
        """``on_id`` that also notes the upstream's JSON-RPC id on the span."""
        span = self.span
        if span is None:
            return on_id
        unique = span.unique

        def noted(request_id: int) -> None:
            unique[a.JSONRPC_REQUEST_ID] = str(request_id)
            if on_id is not None:
                on_id(request_id)

        return noted

    def respond(self, response: Mapping[str, Any]) -> None:
        """Mark the CLIENT span with the outcome of the upstream's response."""
        self.error_type = _outcome(self.span, response)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        span = self.span
        if exc is not None:
            error_type = self.error_type = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__qualname__
            if span is not None:
                span.attrs = {**span.attrs, a.ERROR_TYPE: error_type}  # shared: copy, then mark
                span.set_error(str(exc) or error_type)
        tel = self.tel
        if span is not None:
            tel.spans.end(span)
        hist = tel.client_duration
        if hist is not None:
            elapsed = _perf() - self.start
            metric = self.metric
            if self.error_type is None:
                hist.record(self.ckey, elapsed, lambda: metric)
            else:
                failed = self.error_type
                hist.record((self.ckey, failed), elapsed, lambda: {**metric, a.ERROR_TYPE: failed})


__all__ = ["DecisionSpan", "RequestTrace", "UpstreamCall", "current_span_ids"]
