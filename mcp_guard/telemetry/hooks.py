"""What the proxy wraps its work in: one context manager per host request, per decision and per
upstream request.

    with guard.telemetry.request(req) as traced:      # SERVER span, mcp.server.operation.duration
        ...
        req.target = target
        with guard.telemetry.decision(req):           # INTERNAL run_guardrail span, mcp_guard.decisions
            req.verdict = await decide(...)
        ...
        traced.respond(response)

    with upstream.telemetry.upstream_call(upstream, method, params) as call:   # CLIENT span, duration
        response = await send(method, call.inject(params), on_id=call.noting(on_id))
        call.respond(response)

The request's ``RequestContext`` is the one record every reader shares: the pipeline fills in the
target and the verdict once, the span ends read them, and the telemetry writes back the trace and
span ids the audit record carries.  ``OFF`` has the same methods and does nothing (telemetry off
costs a method call and a shared no-op context manager per hook).

The CLIENT span of an upstream request must find the span of the host request it serves, yet
``Upstream.call`` is reached from many places that do not carry the request: that one link is a
context variable (``_CURRENT``), which asyncio copies into each request's task, so it is per
request, never shared between requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.trace import SpanKind

from mcp_guard import __version__
from mcp_guard.jsonrpc import Era
from mcp_guard.telemetry import attributes as a
from mcp_guard.telemetry.export import (
    NOISY_LOGGERS,
    BoundedBatchProcessor,
    Throttle,
    span_exporter,
    span_sender,
)
from mcp_guard.telemetry.metrics import (
    DURATION_BUCKETS,
    DurationHistogram,
    Instruments,
    MonotonicCounter,
    metric_reader,
)
from mcp_guard.telemetry.settings import DEFAULT_EXPORT_TIMEOUT, Settings
from mcp_guard.telemetry.spans import LightSpan, SpanFactory, remote_parent, sampler, traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.request import RequestContext

log = logging.getLogger("mcp_guard.telemetry")


class Upstream(Protocol):
    """What a CLIENT span says of the upstream it went to (``upstreams.Upstream`` has these):
    telemetry sits below the upstream connections and does not import them."""

    name: str
    protocol_version: str

    @property
    def config(self) -> object: ...

_CACHE_LIMIT = 4096
_NONE: Mapping[str, AttributeValue] = {}
_perf = time.perf_counter


# --------------------------------------------------------------------------- off: the same shape, no work


class _Untraced:
    """The context manager every hook returns when telemetry is off (one shared instance)."""

    __slots__ = ()

    def __enter__(self) -> _Untraced:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def respond(self, response: Mapping[str, Any]) -> None:
        return None

    @staticmethod
    def inject(params: dict[str, Any] | None) -> dict[str, Any] | None:
        return params

    @staticmethod
    def noting(on_id: Callable[[int], None] | None) -> Callable[[int], None] | None:
        return on_id


_UNTRACED = _Untraced()


class Hooks:
    """Telemetry off: every hook is a shared no-op context manager."""

    tracing = False

    def request(self, req: RequestContext) -> _Untraced | RequestTrace:
        return _UNTRACED

    def decision(self, req: RequestContext) -> _Untraced | DecisionSpan:
        return _UNTRACED

    def upstream_call(self, upstream: Upstream, method: str, params: Mapping[str, Any] | None) -> _Untraced | UpstreamCall:
        return _UNTRACED

    def flush(self, timeout: float = DEFAULT_EXPORT_TIMEOUT) -> bool:
        return True

    def shutdown(self) -> None:
        return None


OFF = Hooks()


# --------------------------------------------------------------------------- per host request


class RequestTrace:
    """One host request: its SERVER span (None when only metrics are on) and what its child spans share."""

    __slots__ = ("_token", "current", "error_type", "guarded", "method", "req", "span", "start", "target", "target_attr", "tel")

    def __init__(self, tel: Telemetry, req: RequestContext) -> None:
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

    def __init__(self, tel: Telemetry, req: RequestContext) -> None:
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
                if len(tel.guardrail_base) >= _CACHE_LIMIT:
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

    def __init__(self, tel: Telemetry, upstream: Upstream, method: str, params: Mapping[str, Any] | None) -> None:
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


# --------------------------------------------------------------------------- the live instance


class Telemetry(Hooks):
    """Telemetry on: the span pipeline and instruments of one guard process."""

    def __init__(
        self,
        settings: Settings,
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
        scrape_reader: MetricReader | None = None,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.settings = settings
        self.resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        self.scope = InstrumentationScope("mcp_guard", __version__)
        self.processor: BoundedBatchProcessor | None = None
        exporter = span_exporter or _span_exporter(settings)
        if exporter is not None:
            self.processor = BoundedBatchProcessor(
                span_sender(exporter, self.resource, self.scope),
                exporter.shutdown,
                max_queue_size=settings.max_queue_size,
                max_batch_size=settings.max_batch_size,
                schedule_delay=settings.schedule_delay,
            )
        self.tracing = self.processor is not None
        self.spans = SpanFactory(self.processor.on_end if self.processor is not None else _ignore,
                                 sampler(settings.sampler, settings.sampler_arg) if self.tracing else None)
        self.metrics: Instruments | None = None
        self.server_duration: DurationHistogram | None = None
        self.client_duration: DurationHistogram | None = None
        self.decisions: MonotonicCounter | None = None
        reader = metric_reader or _metric_reader(settings) or scrape_reader
        if reader is not None:
            self.metrics = Instruments(self.resource, self.scope, reader, scrape_reader)
            self.server_duration = self.metrics.histogram(
                a.SERVER_DURATION, "s", "Duration of MCP requests the guard served for the host.", DURATION_BUCKETS)
            self.client_duration = self.metrics.histogram(
                a.CLIENT_DURATION, "s", "Duration of MCP requests the guard sent to upstreams.", DURATION_BUCKETS)
            self.decisions = self.metrics.counter(a.DECISIONS, "{decision}", "Tool-call decisions by outcome.")
        # attribute sets built once per distinct input: (the cached mapping, what was built from it),
        # keyed by id and checked by identity
        self.guardrail_base: dict[tuple[Any, ...], tuple[Mapping[str, AttributeValue], dict[str, AttributeValue]]] = {}
        self._client_base: dict[tuple[Any, ...], tuple[tuple[Any, ...], Mapping[str, AttributeValue], Mapping[str, AttributeValue]]] = {}
        self._server_start: dict[tuple[str, str | None, str | None], dict[str, AttributeValue]] = {}
        self._server_end: dict[tuple[Any, ...], tuple[Mapping[str, AttributeValue], dict[str, AttributeValue]]] = {}
        self._merged: dict[tuple[int, int], tuple[Mapping[str, AttributeValue], Mapping[str, AttributeValue],
                                                  dict[str, AttributeValue]]] = {}
        for name in NOISY_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, Throttle) for f in logger.filters):
                logger.addFilter(Throttle())

    def request(self, req: RequestContext) -> RequestTrace:
        return RequestTrace(self, req)

    def decision(self, req: RequestContext) -> DecisionSpan:
        return DecisionSpan(self, req)

    def upstream_call(self, upstream: Upstream, method: str, params: Mapping[str, Any] | None) -> UpstreamCall:
        return UpstreamCall(self, upstream, method, params)

    # A span's attributes are one dict shared by every span with the same set (built once, never
    # changed afterwards; a span that must differ copies it first), so the hot path copies nothing
    # and the OTLP encoder finds the set's encoded bytes by the dict's identity.

    def merged(self, left: Mapping[str, AttributeValue], right: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        """``{**left, **right}``, built once per pair of (cached, unchanging) attribute sets."""
        key = (id(left), id(right))
        found = self._merged.get(key)
        if found is None or found[0] is not left or found[1] is not right:
            if len(self._merged) >= _CACHE_LIMIT:
                self._merged.clear()
            found = self._merged[key] = (left, right, {**left, **right})
        return found[2]

    def server_start(self, method: str, target_attr: str | None, target: str | None) -> dict[str, AttributeValue]:
        """The SERVER span's attributes known when a request arrives."""
        key = (method, target_attr, target)
        attrs = self._server_start.get(key)
        if attrs is None:
            attrs = {a.MCP_METHOD_NAME: method, a.NETWORK_TRANSPORT: "pipe"}
            if target_attr is not None and target is not None:
                attrs[target_attr] = target
                if method == "tools/call":
                    attrs[a.GEN_AI_OPERATION_NAME] = "execute_tool"
            if len(self._server_start) >= _CACHE_LIMIT:
                self._server_start.clear()
            self._server_start[key] = attrs
        return attrs

    def server_end(self, span: LightSpan, version: str, session: str | None, listed: tuple[int, int] | None,
                   who: Mapping[str, AttributeValue], *, private: bool) -> None:
        """Complete the SERVER span's attributes: protocol version, session, tool counts, principal
        (and decision, when there was one)."""
        key = (version, session, listed, id(who))
        found = self._server_end.get(key)
        if found is None or found[0] is not who:
            end: dict[str, AttributeValue] = {a.MCP_PROTOCOL_VERSION: a.text(version)}
            if session is not None:
                end[a.MCP_SESSION_ID] = a.text(session)
            if listed is not None:
                end[a.TOOLS_LISTED], end[a.TOOLS_HIDDEN] = listed
            end.update(who)
            if len(self._server_end) >= _CACHE_LIMIT:
                self._server_end.clear()
            found = self._server_end[key] = (who, end)
        if private:
            span.attrs.update(found[1])  # a span marked with its error has its own copy already
        else:
            span.attrs = self.merged(span.attrs, found[1])

    def client_attrs(self, upstream: Upstream, method: str, target_attr: str | None, target: str | None,
                     ) -> tuple[tuple[Any, ...], Mapping[str, AttributeValue], Mapping[str, AttributeValue]]:
        """(key, span attributes, metric attributes) of a request to ``upstream``, built once per kind."""
        url = getattr(upstream.config, "url", None)
        key = (upstream.name, upstream.protocol_version, url, method, target_attr, target)
        found = self._client_base.get(key)
        if found is not None:
            return found
        attrs: dict[str, AttributeValue] = {
            a.MCP_METHOD_NAME: method,
            a.MCP_PROTOCOL_VERSION: a.text(upstream.protocol_version),
            a.NETWORK_TRANSPORT: "tcp" if url else "pipe",
            a.UPSTREAM: a.text(upstream.name),
        }
        if url:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if parts.hostname:
                attrs[a.SERVER_ADDRESS] = parts.hostname
                attrs[a.SERVER_PORT] = parts.port or (443 if parts.scheme == "https" else 80)
        if target is not None:
            attrs[target_attr] = target  # type: ignore[index]
            if method == "tools/call":
                attrs[a.GEN_AI_OPERATION_NAME] = "execute_tool"
        if len(self._client_base) >= _CACHE_LIMIT:
            self._client_base.clear()
        found = self._client_base[key] = (key, attrs, dict(attrs))
        return found

    def flush(self, timeout: float = DEFAULT_EXPORT_TIMEOUT) -> bool:
        ok = True
        if self.processor is not None:
            ok = self.processor.force_flush(int(timeout * 1000))
        if self.metrics is not None:
            ok = self.metrics.force_flush(timeout * 1000) and ok
        return ok

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the export time-out) and stop; never fails the guard's exit."""
        try:
            if self.processor is not None:
                self.processor.shutdown()
            if self.metrics is not None:
                self.metrics.shutdown(timeout_millis=self.settings.timeout * 1000)
        except Exception as exc:  # process edge: exporting is best effort, the exit must happen
            log.warning("telemetry shutdown failed: %s", exc)


_span_exporter = span_exporter
_metric_reader = metric_reader


def _ignore(span: LightSpan) -> None:
    return None


__all__ = ["OFF", "DecisionSpan", "Hooks", "RequestTrace", "Telemetry", "UpstreamCall", "current_span_ids"]
