"""OpenTelemetry for the guard: who did what, on whose behalf, under which rule (spec §7).

One SERVER span per host request (parented from the host's ``params._meta`` W3C trace context), one
INTERNAL ``run_guardrail mcp-guard`` span per decision, one CLIENT span per upstream request (its
context injected into the upstream's ``params._meta``), so host → guard → upstream is one trace.
Plus the MCP operation-duration histograms and a ``mcp_guard.decisions`` counter.

Design choices:

- A private ``TracerProvider``, never the global one: the ``mcp`` SDK's own instrumentation
  (``mcp-python-sdk`` tracer) stays a no-op, so nothing is emitted twice, and only the W3C
  ``traceparent``/``tracestate`` are injected upstream, never ``baggage`` (principal and grant data
  must not leak to upstreams through it).
- Off unless configured (``OTEL_TRACES_EXPORTER``/``OTEL_METRICS_EXPORTER`` or an OTLP endpoint, or
  the ``telemetry:`` block); off costs one module-global check per hook.
- Export runs on a background thread behind a bounded queue with a short timeout: a dead or slow
  collector drops spans (counted, logged at most every 30 s) and never delays or fails a call.
- Attributes never carry tool argument values or the grant token.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mcp_guard import __version__
from mcp_guard.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.config import TelemetryConfig
    from mcp_guard.identity import Principal

log = logging.getLogger("mcp_guard.telemetry")

# --------------------------------------------------------------------------- attribute names
# Local constants (the semconv package marks the MCP/GenAI names as moved/deprecated).

MCP_METHOD_NAME = "mcp.method.name"
MCP_PROTOCOL_VERSION = "mcp.protocol.version"
MCP_SESSION_ID = "mcp.session.id"
MCP_RESOURCE_URI = "mcp.resource.uri"
JSONRPC_REQUEST_ID = "jsonrpc.request.id"
RPC_RESPONSE_STATUS_CODE = "rpc.response.status_code"
ERROR_TYPE = "error.type"
NETWORK_TRANSPORT = "network.transport"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_PROMPT_NAME = "gen_ai.prompt.name"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
ENDUSER_ID = "enduser.id"

GUARDRAIL_COMPONENT_NAME = "gen_ai.guardrail.component.name"
GUARDRAIL_TARGET_TYPE = "gen_ai.guardrail.target.type"
GUARDRAIL_TARGET_SUBTYPE = "gen_ai.guardrail.target.subtype"
GUARDRAIL_TARGET_ID = "gen_ai.guardrail.target.id"
GUARDRAIL_VERDICT_TYPE = "gen_ai.guardrail.verdict.type"
GUARDRAIL_VERDICT_CODE = "gen_ai.guardrail.verdict.code"
GUARDRAIL_VERDICT_REASON = "gen_ai.guardrail.verdict.reason"
GUARDRAIL_ACTION_TYPE = "gen_ai.guardrail.action.type"
GUARDRAIL_POLICY_ID = "gen_ai.guardrail.security.policy.id"
GUARDRAIL_RULE_ID = "gen_ai.guardrail.security.policy.rule.id"

PRINCIPAL_CHAIN = "mcp_guard.principal.chain"
PRINCIPAL_VERIFIED = "mcp_guard.principal.verified"
PURPOSE = "mcp_guard.purpose"
GRANT_ID = "mcp_guard.grant.id"
DELEGATION_DEPTH = "mcp_guard.delegation.depth"
DECISION = "mcp_guard.decision"
POLICY_IDS = "mcp_guard.policy.ids"
RULE_IDS = "mcp_guard.rule.ids"
DECISION_REASON = "mcp_guard.decision.reason"
APPROVER = "mcp_guard.approver"
UPSTREAM = "mcp_guard.upstream"
TOOL = "mcp_guard.tool"
TOOLS_LISTED = "mcp_guard.tools.listed"
TOOLS_HIDDEN = "mcp_guard.tools.hidden"

SERVER_DURATION = "mcp.server.operation.duration"
CLIENT_DURATION = "mcp.client.operation.duration"
DECISIONS = "mcp_guard.decisions"
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

COMPONENT = "mcp-guard"
GUARDRAIL_SPAN = f"run_guardrail {COMPONENT}"

# decision -> (gen_ai.guardrail.verdict.type, gen_ai.guardrail.action.type); an approval is an
# escalation whose outcome is recorded as an event, not by overwriting the verdict (semconv).
_VERDICTS: dict[str, tuple[str, str]] = {
    "allow": ("allow", "allow"),
    "approval_required": ("escalate", "escalate"),
    "approved": ("escalate", "escalate"),
    "rejected": ("escalate", "escalate"),
}
_DENY = ("deny", "block")

EXPORTERS = ("otlp", "console", "none")
DEFAULT_EXPORT_TIMEOUT = 3.0  # seconds per OTLP request; the standard 10 s default is too patient
DEFAULT_QUEUE = 2048
DEFAULT_BATCH = 512
DEFAULT_DELAY = 1.0
_LOG_EVERY = 30.0

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C trace context only: never baggage


# --------------------------------------------------------------------------- what the proxy passes in


class SessionLike(Protocol):
    """The parts of a ``GuardSession`` spans describe."""

    @property
    def id(self) -> str: ...
    @property
    def era(self) -> str | None: ...
    @property
    def protocol_version(self) -> str: ...
    @property
    def principal(self) -> Principal: ...


class UpstreamLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def protocol_version(self) -> str: ...
    @property
    def config(self) -> Any: ...


class VerdictLike(Protocol):
    @property
    def decision(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def policy_ids(self) -> tuple[str, ...]: ...
    @property
    def rule_ids(self) -> tuple[str, ...]: ...
    @property
    def approver(self) -> str | None: ...


class EntryLike(Protocol):
    @property
    def upstream(self) -> str: ...
    @property
    def exposed(self) -> str: ...
    @property
    def qualified(self) -> str: ...


# --------------------------------------------------------------------------- bounded export


class BoundedBatchProcessor(SpanProcessor):
    """Batches ended spans to an exporter on a daemon thread; never blocks the caller.

    ``on_end`` only appends to a bounded deque (the guard's event loop must never wait on a
    collector); when the queue is full the span is dropped and counted.  Failed exports count as
    dropped too.  Both are logged at most every 30 s with the running totals.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = DEFAULT_QUEUE,
        max_batch_size: int = DEFAULT_BATCH,
        schedule_delay: float = DEFAULT_DELAY,
    ) -> None:
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._max_batch = min(max_batch_size, max_queue_size)
        self._delay = schedule_delay
        self._queue: collections.deque[ReadableSpan] = collections.deque()
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

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopped:
            return
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            self._maybe_log()
            return
        self._queue.append(span)
        if len(self._queue) >= self._max_batch:
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
                batch: list[ReadableSpan] = []
                while self._queue and len(batch) < self._max_batch:
                    batch.append(self._queue.popleft())
                try:
                    ok = self._exporter.export(batch) is SpanExportResult.SUCCESS
                except Exception:  # an exporter bug must not kill the export thread
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
        self._exporter.shutdown()
        self._maybe_log(final=True)


class _Throttle(logging.Filter):
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


_NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk.metrics._internal.export",
)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective telemetry settings: the ``telemetry:`` block over the ``OTEL_*`` variables."""

    traces: str = "none"
    metrics: str = "none"
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    service_name: str = COMPONENT
    timeout: float = DEFAULT_EXPORT_TIMEOUT
    max_queue_size: int = DEFAULT_QUEUE
    max_batch_size: int = DEFAULT_BATCH
    schedule_delay: float = DEFAULT_DELAY
    metric_interval: float = 60.0

    @property
    def enabled(self) -> bool:
        return self.traces != "none" or self.metrics != "none"


def _signal_endpoint(base: str, signal: str) -> str:
    return base.rstrip("/") + f"/v1/{signal}"


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def _exporter_name(value: str | None, var: str, has_endpoint: bool) -> str:
    """The exporter for one signal; unset means ``otlp`` when an endpoint is configured, else none."""
    if value is None or not value.strip():
        return "otlp" if has_endpoint else "none"
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in EXPORTERS:
            raise ConfigError(f"{var}: unknown exporter {n!r}; use one of otlp, console, none")
    chosen = [n for n in names if n != "none"]
    if len(chosen) > 1:
        raise ConfigError(f"{var}: only one exporter at a time is supported, got {value!r}")
    return chosen[0] if chosen else "none"


def resolve(config: TelemetryConfig | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Work out the settings; raises ``ConfigError`` naming the variable or key that is wrong."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Settings()
    base = (config.endpoint if config else None) or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    traces_ep = (_signal_endpoint(config.endpoint, "traces") if config and config.endpoint else None) or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ) or (_signal_endpoint(base, "traces") if base else None)
    metrics_ep = (_signal_endpoint(config.endpoint, "metrics") if config and config.endpoint else None) or env.get(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ) or (_signal_endpoint(base, "metrics") if base else None)
    traces_var = "telemetry.traces_exporter" if config and config.traces_exporter else "OTEL_TRACES_EXPORTER"
    metrics_var = "telemetry.metrics_exporter" if config and config.metrics_exporter else "OTEL_METRICS_EXPORTER"
    traces = _exporter_name((config.traces_exporter if config else None) or env.get("OTEL_TRACES_EXPORTER"), traces_var,
                            traces_ep is not None)
    metrics = _exporter_name((config.metrics_exporter if config else None) or env.get("OTEL_METRICS_EXPORTER"),
                             metrics_var, metrics_ep is not None)
    timeout_var = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" if env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") else "OTEL_EXPORTER_OTLP_TIMEOUT"
    return Settings(
        traces=traces,
        metrics=metrics,
        traces_endpoint=traces_ep,
        metrics_endpoint=metrics_ep,
        service_name=(config.service_name if config else None) or env.get("OTEL_SERVICE_NAME") or COMPONENT,
        # the spec's timeout variables are in seconds for OTLP, milliseconds for the batch processor
        timeout=_number(env, timeout_var, DEFAULT_EXPORT_TIMEOUT),
        max_queue_size=int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)),
        max_batch_size=int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH)),
        schedule_delay=_number(env, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY * 1000) / 1000,
        metric_interval=_number(env, "OTEL_METRIC_EXPORT_INTERVAL", 60000) / 1000,
    )


# --------------------------------------------------------------------------- per-request state


@dataclass(slots=True)
class _Request:
    """What one host request's spans share (kept in a context variable of its task)."""

    span: Span
    error_type: str | None = None
    guarded: dict[str, AttributeValue] = field(default_factory=dict)  # principal + decision, for child spans
    guardrail: trace.SpanContext | None = None


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("mcp_guard_request", default=None)


@functools.lru_cache(maxsize=256)
def principal_attributes(who: Principal) -> Mapping[str, AttributeValue]:
    """Spec §7 identity attributes (cached: a session's principal rarely changes)."""
    attrs: dict[str, AttributeValue] = {
        PRINCIPAL_CHAIN: who.chain,
        ENDUSER_ID: who.user,
        DELEGATION_DEPTH: who.depth,
    }
    if who.agent:
        attrs[GEN_AI_AGENT_NAME] = who.agent
    if who.purpose:
        attrs[PURPOSE] = who.purpose
    if who.grant_id:
        attrs[GRANT_ID] = who.grant_id
    return attrs


def decision_attributes(verdict: VerdictLike, entry: EntryLike) -> dict[str, AttributeValue]:
    """Spec §7 decision attributes: policy text only, never argument values."""
    attrs: dict[str, AttributeValue] = {
        DECISION: verdict.decision,
        POLICY_IDS: verdict.policy_ids,
        DECISION_REASON: verdict.reason,
        UPSTREAM: entry.upstream,
    }
    if verdict.approver:
        attrs[APPROVER] = verdict.approver
    return attrs


def _carrier(params: Any) -> dict[str, str] | None:
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return None
    tp = meta.get("traceparent")
    if not isinstance(tp, str):
        return None
    carrier = {"traceparent": tp}
    ts = meta.get("tracestate")
    if isinstance(ts, str):
        carrier["tracestate"] = ts
    return carrier


def _target(method: str, params: Any) -> tuple[str | None, str | None]:
    """(attribute, value) naming what a request is about: the tool or prompt (never a resource URI)."""
    if isinstance(params, dict) and isinstance(params.get("name"), str):
        if method == "tools/call":
            return GEN_AI_TOOL_NAME, params["name"]
        if method == "prompts/get":
            return GEN_AI_PROMPT_NAME, params["name"]
    return None, None


def _error_of(response: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(error.type, rpc status code, description) of a JSON-RPC response, all None on success."""
    err = response.get("error")
    if isinstance(err, dict):
        code = str(err.get("code", "_OTHER"))
        return code, code, str(err.get("message", ""))
    res = response.get("result")
    if isinstance(res, dict) and res.get("isError") is True:
        return "tool_error", None, None
    return None, None, None


# --------------------------------------------------------------------------- the live instance


class Telemetry:
    """Tracer, instruments and the hooks' real implementations (used when telemetry is on)."""

    def __init__(
        self,
        settings: Settings,
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
    ) -> None:
        from opentelemetry.sdk.resources import Resource

        self.settings = settings
        resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        self.processor: BoundedBatchProcessor | None = None
        self.provider: TracerProvider | None = None
        exporter = span_exporter or _span_exporter(settings)
        if exporter is not None:
            self.provider = TracerProvider(resource=resource)
            self.processor = BoundedBatchProcessor(
                exporter,
                max_queue_size=settings.max_queue_size,
                max_batch_size=settings.max_batch_size,
                schedule_delay=settings.schedule_delay,
            )
            self.provider.add_span_processor(self.processor)
            self.tracer: trace.Tracer = self.provider.get_tracer("mcp_guard", __version__)
        else:
            self.tracer = trace.NoOpTracer()
        self.meter_provider: Any = None
        reader = metric_reader or _metric_reader(settings)
        if reader is not None:
            from opentelemetry.sdk.metrics import MeterProvider

            self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
            meter: Any = self.meter_provider.get_meter("mcp_guard", __version__)
        else:
            from opentelemetry.metrics import NoOpMeter

            meter = NoOpMeter("mcp_guard")
        self.server_duration: Histogram = meter.create_histogram(
            SERVER_DURATION, unit="s", description="Duration of MCP requests the guard served for the host.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.client_duration: Histogram = meter.create_histogram(
            CLIENT_DURATION, unit="s", description="Duration of MCP requests the guard sent to upstreams.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.decisions: Counter = meter.create_counter(
            DECISIONS, unit="{decision}", description="Tool-call decisions by outcome."
        )
        for name in _NOISY_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _Throttle) for f in logger.filters):
                logger.addFilter(_Throttle())

    # -- host side

    async def serve(self, session: SessionLike, message: Mapping[str, Any], handler: Callable[[Any], Awaitable[None]]) -> None:
        method = message.get("method")
        method = method if isinstance(method, str) else "_OTHER"
        params = message.get("params")
        target_attr, target = _target(method, params)
        carrier = _carrier(params)
        parent = _PROPAGATOR.extract(carrier) if carrier else otel_context.Context()
        attrs: dict[str, AttributeValue] = {
            MCP_METHOD_NAME: method,
            JSONRPC_REQUEST_ID: str(message.get("id")),
            NETWORK_TRANSPORT: "pipe",
        }
        if target_attr is not None and target is not None:
            attrs[target_attr] = target
            if method == "tools/call":
                attrs[GEN_AI_OPERATION_NAME] = "execute_tool"
        elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe") and isinstance(params, dict):
            uri = params.get("uri")
            if isinstance(uri, str):
                attrs[MCP_RESOURCE_URI] = uri
        span = self.tracer.start_span(f"{method} {target}" if target else method, parent, SpanKind.SERVER, attrs)
        state = _Request(span)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        req_token = _REQUEST.set(state)
        start = time.perf_counter()
        try:
            await handler(message)
        finally:
            elapsed = time.perf_counter() - start
            _REQUEST.reset(req_token)
            otel_context.detach(token)
            if span.is_recording():
                end: dict[str, AttributeValue] = {MCP_PROTOCOL_VERSION: session.protocol_version}
                if session.era == "legacy":
                    end[MCP_SESSION_ID] = session.id
                if not state.guarded and method not in ("initialize", "server/discover", "ping"):
                    end.update(principal_attributes(session.principal))
                span.set_attributes(end)
            span.end()
            metric: dict[str, AttributeValue] = {MCP_METHOD_NAME: method, NETWORK_TRANSPORT: "pipe",
                                                 MCP_PROTOCOL_VERSION: session.protocol_version}
            if target_attr is not None and target is not None:
                metric[target_attr] = target
            if state.error_type:
                metric[ERROR_TYPE] = state.error_type
            self.server_duration.record(elapsed, metric)

    async def decide(self, session: SessionLike, who: Principal, entry: EntryLike, verdict: Awaitable[VerdictLike]) -> VerdictLike:
        state = _REQUEST.get()
        ident = principal_attributes(who)
        attrs: dict[str, AttributeValue] = {
            GEN_AI_OPERATION_NAME: "run_guardrail",
            GUARDRAIL_COMPONENT_NAME: COMPONENT,
            GUARDRAIL_TARGET_TYPE: "input",
            GUARDRAIL_TARGET_SUBTYPE: "tool_call",
            GUARDRAIL_TARGET_ID: entry.qualified,
            PRINCIPAL_VERIFIED: who.verified,
            **ident,
        }
        with self.tracer.start_as_current_span(GUARDRAIL_SPAN, kind=SpanKind.INTERNAL, attributes=attrs) as span:
            result = await verdict
            decided = decision_attributes(result, entry)
            verdict_type, action = _VERDICTS.get(result.decision, _DENY)
            outcome: dict[str, AttributeValue] = {
                **decided,
                GUARDRAIL_VERDICT_TYPE: verdict_type,
                GUARDRAIL_ACTION_TYPE: action,
                GUARDRAIL_VERDICT_CODE: result.decision,
                GUARDRAIL_VERDICT_REASON: result.reason,
            }
            if result.policy_ids:
                outcome[GUARDRAIL_POLICY_ID] = result.policy_ids[0]
            if result.rule_ids:
                outcome[GUARDRAIL_RULE_ID] = result.rule_ids[0]
                outcome[RULE_IDS] = result.rule_ids
            span.set_attributes(outcome)
            if result.decision in ("approved", "rejected"):
                event: dict[str, AttributeValue] = {DECISION: result.decision}
                if result.approver:
                    event[APPROVER] = result.approver
                span.add_event("mcp_guard.approval.resolved", event)
            if state is not None:
                state.guarded = {**ident, **decided}
                state.guardrail = span.get_span_context()
                state.span.set_attributes(state.guarded)
        self.decisions.add(1, {DECISION: result.decision, UPSTREAM: entry.upstream, GEN_AI_TOOL_NAME: entry.exposed})
        return result

    # -- upstream side

    async def call(
        self,
        upstream: UpstreamLike,
        method: str,
        params: dict[str, Any] | None,
        send: Callable[..., Coroutine[Any, Any, dict[str, Any]]],
        timeout: float | None,  # noqa: ASYNC109 - passed through to Upstream.call
        on_id: Callable[[int], None] | None,
    ) -> dict[str, Any]:
        target_attr, target = _target(method, params)
        url = getattr(upstream.config, "url", None)
        attrs: dict[str, AttributeValue] = {
            MCP_METHOD_NAME: method,
            MCP_PROTOCOL_VERSION: upstream.protocol_version,
            NETWORK_TRANSPORT: "tcp" if url else "pipe",
            UPSTREAM: upstream.name,
        }
        if url:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if parts.hostname:
                attrs[SERVER_ADDRESS] = parts.hostname
                attrs[SERVER_PORT] = parts.port or (443 if parts.scheme == "https" else 80)
        if target_attr is not None and target is not None:
            attrs[target_attr] = target
            if method == "tools/call":
                attrs[GEN_AI_OPERATION_NAME] = "execute_tool"
        metric = dict(attrs)
        state = _REQUEST.get()
        if state is not None and state.guarded:
            attrs.update(state.guarded)
        span = self.tracer.start_span(f"{method} {target}" if target else method, kind=SpanKind.CLIENT, attributes=attrs)
        out = dict(params) if params else {}
        meta = out.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.pop("baggage", None)  # the guard never forwards baggage it did not vet
        _PROPAGATOR.inject(meta, trace.set_span_in_context(span))
        if meta:
            out["_meta"] = meta

        def noted(request_id: int) -> None:
            span.set_attribute(JSONRPC_REQUEST_ID, str(request_id))
            if on_id is not None:
                on_id(request_id)

        start = time.perf_counter()
        error_type: str | None = None
        try:
            response = await send(method, out or None, timeout=timeout, on_id=noted)
            error_type, code, text = _error_of(response)
            if error_type is not None:
                span.set_attribute(ERROR_TYPE, error_type)
                if code is not None:
                    span.set_attribute(RPC_RESPONSE_STATUS_CODE, code)
                span.set_status(Status(StatusCode.ERROR, text))
            return response
        except BaseException as exc:
            error_type = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__qualname__
            span.set_attribute(ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, str(exc) or error_type))
            raise
        finally:
            span.end()
            if error_type is not None:
                metric[ERROR_TYPE] = error_type
            self.client_duration.record(time.perf_counter() - start, metric)

    # -- lifecycle

    def flush(self, timeout: float = DEFAULT_EXPORT_TIMEOUT) -> bool:
        ok = True
        if self.provider is not None:
            ok = self.provider.force_flush(int(timeout * 1000))
        if self.meter_provider is not None:
            ok = bool(self.meter_provider.force_flush(int(timeout * 1000))) and ok
        return ok

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=int(self.settings.timeout * 1000))


def _span_exporter(settings: Settings) -> SpanExporter | None:
    if settings.traces == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)  # stdout is the MCP stream
    if settings.traces == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.traces_endpoint, timeout=settings.timeout)
    return None


def _metric_reader(settings: Settings) -> MetricReader | None:
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader

    exporter: MetricExporter
    if settings.metrics == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        exporter = ConsoleMetricExporter(out=sys.stderr)
    elif settings.metrics == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=settings.metrics_endpoint, timeout=settings.timeout)
    else:
        return None
    return PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=settings.metric_interval * 1000,
        export_timeout_millis=settings.timeout * 1000,
    )


# --------------------------------------------------------------------------- module API (the proxy's hooks)

_active: Telemetry | None = None


def setup(
    config: TelemetryConfig | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry | None:
    """Configure (or reconfigure) the process's telemetry; returns None when it is off.

    ``span_exporter`` / ``metric_reader`` replace the configured ones (tests, benchmarks).
    """
    global _active
    shutdown()
    settings = resolve(config, environ)
    if span_exporter is not None or metric_reader is not None:
        settings = Settings(
            traces="custom" if span_exporter is not None else "none",
            metrics="custom" if metric_reader is not None else "none",
            service_name=settings.service_name,
            max_queue_size=settings.max_queue_size,
            max_batch_size=settings.max_batch_size,
            schedule_delay=settings.schedule_delay,
        )
    if not settings.enabled:
        return None
    _active = Telemetry(settings, span_exporter=span_exporter, metric_reader=metric_reader)
    log.info(
        "telemetry on: traces %s%s, metrics %s",
        settings.traces,
        f" -> {settings.traces_endpoint}" if settings.traces == "otlp" else "",
        settings.metrics,
    )
    return _active


def active() -> Telemetry | None:
    return _active


def shutdown() -> None:
    """Flush what is queued (bounded by the export timeout) and stop; safe to call twice."""
    global _active
    tel, _active = _active, None
    if tel is not None:
        try:
            tel.shutdown()
        except Exception as exc:  # never fail the guard's exit over telemetry
            log.warning("telemetry shutdown failed: %s", exc)


def serve(session: SessionLike, message: dict[str, Any], handler: Callable[[Any], Coroutine[Any, Any, None]]) -> Coroutine[Any, Any, None]:
    """The coroutine that serves one host request, inside its SERVER span when telemetry is on."""
    tel = _active
    return handler(message) if tel is None else tel.serve(session, message, handler)


def decision(session: SessionLike, who: Principal, entry: EntryLike, verdict: Awaitable[Any]) -> Awaitable[Any]:
    """Await a verdict inside a ``run_guardrail mcp-guard`` span (and count it)."""
    tel = _active
    return verdict if tel is None else tel.decide(session, who, entry, verdict)


def set_response(response: Mapping[str, Any]) -> None:
    """Mark the current host request's SERVER span with the outcome of its response."""
    state = _REQUEST.get()
    if state is None:
        return
    error_type, code, text = _error_of(response)
    if error_type is None:
        return
    state.error_type = error_type
    span = state.span
    span.set_attribute(ERROR_TYPE, error_type)
    if code is not None:
        span.set_attribute(RPC_RESPONSE_STATUS_CODE, code)
    span.set_status(Status(StatusCode.ERROR, text))


def note_tools(listed: int, hidden: int) -> None:
    """``tools/list``: how many tools the host saw and how many policy or grant hid."""
    state = _REQUEST.get()
    if state is not None:
        state.span.set_attributes({TOOLS_LISTED: listed, TOOLS_HIDDEN: hidden})


def audit_ids() -> dict[str, str]:
    """``trace_id``/``span_id`` for the audit record of the current decision ({} when tracing is off)."""
    state = _REQUEST.get()
    if state is None:
        return {}
    ctx = state.guardrail or state.span.get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def upstream_call(
    upstream: UpstreamLike,
    method: str,
    params: dict[str, Any] | None,
    send: Callable[..., Coroutine[Any, Any, dict[str, Any]]],
    *,
    timeout: float | None = None,
    on_id: Callable[[int], None] | None = None,
) -> Coroutine[Any, Any, dict[str, Any]]:
    """The coroutine that sends one upstream request, inside its CLIENT span when telemetry is on."""
    tel = _active
    if tel is None:
        return send(method, params, timeout=timeout, on_id=on_id)
    return tel.call(upstream, method, params, send, timeout, on_id)


__all__ = [
    "BoundedBatchProcessor",
    "Settings",
    "Telemetry",
    "active",
    "audit_ids",
    "decision",
    "decision_attributes",
    "note_tools",
    "principal_attributes",
    "resolve",
    "serve",
    "set_response",
    "setup",
    "shutdown",
    "upstream_call",
]
