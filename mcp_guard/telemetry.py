"""OpenTelemetry for the guard: who did what, on whose behalf, under which rule (docs/telemetry.md).

One SERVER span per host request (parented from the host's ``params._meta`` W3C trace context), one
INTERNAL ``run_guardrail mcp-guard`` span per decision, one CLIENT span per upstream request (its
context injected into the upstream's ``params._meta``), so host → guard → upstream is one trace.
Plus the MCP operation-duration histograms and a ``mcp_guard.decisions`` counter.

Design choices:

- The hot path is cheap (the issue's bar: tracing plus audit ≤ 100 µs CPU per call).  Spans are
  light records (``telemetry_otlp.LightSpan``) built from attributes the guard's own code produced,
  not SDK spans that validate every attribute; OTLP/HTTP gets protobuf written directly with the
  repeating attributes' bytes cached (``telemetry_otlp.SpanEncoder``).  Any other exporter
  (console, the SDK's in-memory one in tests, any ``SpanExporter``) gets the same spans as SDK
  ``ReadableSpan``\\ s, converted on the export thread.  The decision counter is summed in a plain
  dict and handed to the SDK counter when a metric reader collects.
- No tracer provider, and never the global one: the ``mcp`` SDK's own instrumentation
  (``mcp-python-sdk`` tracer) stays a no-op, so nothing is emitted twice, and only the W3C
  ``traceparent``/``tracestate`` are injected upstream, never ``baggage`` (principal and grant data
  must not leak to upstreams through it).  Sampling follows ``OTEL_TRACES_SAMPLER`` like the SDK
  (parent-based, always on by default).
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
import random
import re
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, TraceState

from mcp_guard import __version__
from mcp_guard.errors import ConfigError
from mcp_guard.telemetry_metrics import DurationHistogram, Instruments, MonotonicCounter
from mcp_guard.telemetry_otlp import LightOTLPSpanExporter, LightSpan, SpanEncoder

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
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


# --------------------------------------------------------------------------- what the proxy passes in


class RequestLike(Protocol):
    """The parts of a host request (the proxy's ``RequestContext``) spans describe."""

    @property
    def session_id(self) -> str: ...
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
    def kind(self) -> str: ...
    @property
    def upstream(self) -> str: ...
    @property
    def exposed(self) -> str: ...
    @property
    def qualified(self) -> str: ...


# --------------------------------------------------------------------------- bounded export


class BoundedBatchProcessor:
    """Batches ended spans to an exporter on a daemon thread; never blocks the caller.

    ``on_end`` only appends to a bounded deque (the guard's event loop must never wait on a
    collector); when the queue is full the span is dropped and counted.  Failed exports count as
    dropped too.  Both are logged at most every 30 s with the running totals.  ``export`` sends one
    batch and says whether the collector took it; ``close`` shuts the exporter down.
    """

    def __init__(
        self,
        export: Callable[[list[LightSpan]], bool],
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
        self._queue: collections.deque[LightSpan] = collections.deque()
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

    def on_end(self, span: LightSpan) -> None:
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
                batch: list[LightSpan] = []
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


def span_sender(exporter: SpanExporter, resource: Resource, scope: InstrumentationScope) -> Callable[[list[LightSpan]], bool]:
    """How a batch of light spans reaches ``exporter``: protobuf bytes written directly for the
    guard's OTLP exporter, SDK ``ReadableSpan``\\ s for any other (console, in-memory, custom)."""
    if isinstance(exporter, LightOTLPSpanExporter):
        encoder = SpanEncoder(resource, scope)

        def send_bytes(batch: list[LightSpan]) -> bool:
            return exporter.export_bytes(encoder.request(batch), len(batch))

        return send_bytes

    def send_readable(batch: list[LightSpan]) -> bool:
        return exporter.export([s.readable(resource, scope) for s in batch]) is SpanExportResult.SUCCESS

    return send_readable


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


class _Request:
    """What one host request's spans share (kept in a context variable of its task)."""

    __slots__ = ("current", "error_type", "guarded", "guardrail", "span")

    def __init__(self, span: LightSpan | None) -> None:
        self.span = span  # the SERVER span (None when only metrics are on)
        self.current = span  # the parent of spans started now (the guardrail span during a decision)
        self.error_type: str | None = None
        self.guarded: dict[str, AttributeValue] = {}  # principal + decision, for child spans
        self.guardrail: LightSpan | None = None


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("mcp_guard_request", default=None)


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


@functools.lru_cache(maxsize=256)
def principal_attributes(who: Principal) -> Mapping[str, AttributeValue]:
    """The principal attributes of docs/telemetry.md (cached: a session's principal rarely changes; coerced once to
    valid attribute values, since spans take them as they are)."""
    attrs: dict[str, AttributeValue] = {
        PRINCIPAL_CHAIN: tuple(_text(c) for c in who.chain),
        ENDUSER_ID: _text(who.user),
        DELEGATION_DEPTH: int(who.depth),
    }
    if who.agent:
        attrs[GEN_AI_AGENT_NAME] = _text(who.agent)
    if who.purpose:
        attrs[PURPOSE] = _text(who.purpose)
    if who.grant_id:
        attrs[GRANT_ID] = _text(who.grant_id)
    return attrs


def decision_attributes(verdict: VerdictLike, entry: EntryLike) -> dict[str, AttributeValue]:
    """The decision attributes of docs/telemetry.md: policy text only, never argument values."""
    return dict(_decided(verdict.decision, tuple(verdict.policy_ids), tuple(verdict.rule_ids), verdict.reason,
                         entry.upstream, verdict.approver)[0])


@functools.lru_cache(maxsize=1024)
def _decided(
    decision: str, policy_ids: tuple[str, ...], rule_ids: tuple[str, ...], reason: str, upstream: str, approver: str | None
) -> tuple[Mapping[str, AttributeValue], Mapping[str, AttributeValue]]:
    """(the decision attributes of docs/telemetry.md, the guardrail span's outcome attributes), built once per
    distinct outcome: the same rule deciding the same way repeats call after call."""
    decided: dict[str, AttributeValue] = {
        DECISION: str(decision),  # a plain str, also for the proxy's Outcome enum
        POLICY_IDS: tuple(_text(p) for p in policy_ids),
        DECISION_REASON: _text(reason),
        UPSTREAM: _text(upstream),
    }
    if approver:
        decided[APPROVER] = _text(approver)
    verdict_type, action = _VERDICTS.get(decision, _DENY)
    outcome: dict[str, AttributeValue] = {
        **decided,
        GUARDRAIL_VERDICT_TYPE: verdict_type,
        GUARDRAIL_ACTION_TYPE: action,
        GUARDRAIL_VERDICT_CODE: decided[DECISION],
        GUARDRAIL_VERDICT_REASON: decided[DECISION_REASON],
    }
    if policy_ids:
        outcome[GUARDRAIL_POLICY_ID] = _text(policy_ids[0])
    if rule_ids:
        outcome[GUARDRAIL_RULE_ID] = _text(rule_ids[0])
        outcome[RULE_IDS] = tuple(_text(r) for r in rule_ids)
    return decided, outcome


# W3C traceparent, exactly as the SDK's TraceContextTextMapPropagator reads it
_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACESTATE_MAX = 512
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16


def _remote_parent(meta: Mapping[str, Any]) -> tuple[int, int, bool, TraceState | None] | None:
    """(trace id, span id, sampled, trace state) from the host's ``_meta``, or None."""
    header = meta.get("traceparent")
    if not isinstance(header, str) or not header or len(header) > 512:
        return None
    match = _TRACEPARENT.search(header)
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


def _traceparent(span: LightSpan) -> str:
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.flags:02x}"


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



_CACHE_LIMIT = 4096
_UNGUARDED = frozenset(("initialize", "server/discover", "ping"))
_SUBTYPE = {"tool": "tool_call", "resource": "resource", "prompt": "prompt"}  # gen_ai.guardrail.target.subtype
_NAME_ATTR = {"tool": GEN_AI_TOOL_NAME, "prompt": GEN_AI_PROMPT_NAME}
_RESOURCE_METHODS = frozenset(("resources/read", "resources/subscribe", "resources/unsubscribe"))
_GUARDRAIL_FIXED: Mapping[str, AttributeValue] = {
    GEN_AI_OPERATION_NAME: "run_guardrail",
    GUARDRAIL_COMPONENT_NAME: COMPONENT,
    GUARDRAIL_TARGET_TYPE: "input",
    GUARDRAIL_TARGET_SUBTYPE: "tool_call",
}


def _server_metric(method: str, version: object, target_attr: str | None, target: str | None,
                   error_type: str | None) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {MCP_METHOD_NAME: method, NETWORK_TRANSPORT: "pipe", MCP_PROTOCOL_VERSION: _text(version)}
    if target_attr is not None and target is not None:
        attrs[target_attr] = target
    if error_type:
        attrs[ERROR_TYPE] = error_type
    return attrs


def _sampler_from_env() -> Sampler | None:
    """The ``OTEL_TRACES_SAMPLER`` sampler, or None for the default (parent-based, always on),
    which the hot path applies inline."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if name in ("", "parentbased_always_on"):
        return None
    from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

    return _get_from_env_or_default()


_getrandbits = random.getrandbits
_time_ns = time.time_ns


def _ignore(span: LightSpan) -> None:
    return None


def _new_id(bits: int) -> int:
    while True:
        value = random.getrandbits(bits)
        if value:
            return value


# --------------------------------------------------------------------------- the live instance


class Telemetry:
    """Span pipeline, instruments and the hooks' real implementations (used when telemetry is on)."""

    def __init__(
        self,
        settings: Settings,
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
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
        self._on_end: Callable[[LightSpan], None] = self.processor.on_end if self.processor is not None else _ignore
        self._sampler = _sampler_from_env() if self.tracing else None
        self.metrics: Instruments | None = None
        reader = metric_reader or _metric_reader(settings)
        if reader is not None:
            self.metrics = Instruments(self.resource, self.scope, reader)
            self.server_duration: DurationHistogram | None = self.metrics.histogram(
                SERVER_DURATION, "s", "Duration of MCP requests the guard served for the host.", DURATION_BUCKETS)
            self.client_duration: DurationHistogram | None = self.metrics.histogram(
                CLIENT_DURATION, "s", "Duration of MCP requests the guard sent to upstreams.", DURATION_BUCKETS)
            self.decisions: MonotonicCounter | None = self.metrics.counter(
                DECISIONS, "{decision}", "Tool-call decisions by outcome.")
        else:
            self.server_duration = self.client_duration = None
            self.decisions = None
        # (the cached mapping, the attributes built from it): keyed by id, checked by identity
        self._guardrail_base: dict[tuple[Any, ...], tuple[Mapping[str, AttributeValue], dict[str, AttributeValue]]] = {}
        self._guarded: dict[tuple[int, int], tuple[Mapping[str, AttributeValue], Mapping[str, AttributeValue],
                                                   dict[str, AttributeValue]]] = {}
        self._client_base: dict[tuple[Any, ...], tuple[tuple[Any, ...], Mapping[str, AttributeValue], Mapping[str, AttributeValue]]] = {}
        for name in _NOISY_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _Throttle) for f in logger.filters):
                logger.addFilter(_Throttle())

    # -- spans

    def _start(
        self,
        name: str,
        kind: SpanKind,
        attrs: dict[str, AttributeValue],
        parent: LightSpan | None,
        remote: tuple[int, int, bool, TraceState | None] | None = None,
    ) -> LightSpan:
        """A new span under ``parent`` (a span of this request) or ``remote`` (the host's context)."""
        if parent is not None:
            trace_id, parent_id, sampled, state, is_remote = parent.trace_id, parent.span_id, parent.sampled, parent.trace_state, False
        elif remote is not None:
            trace_id, parent_id, sampled, state = remote
            is_remote = True
        else:
            trace_id, parent_id, sampled, state, is_remote = _getrandbits(128) or _new_id(128), 0, True, None, False
        if self._sampler is not None:
            sampled, state = self._sample(name, kind, attrs, trace_id, parent_id, sampled, state, is_remote)
        return LightSpan(name, kind, trace_id, _getrandbits(64) or _new_id(64), parent_id, is_remote, sampled, state,
                         attrs, _time_ns())

    def _sample(
        self, name: str, kind: SpanKind, attrs: dict[str, AttributeValue], trace_id: int, parent_id: int,
        parent_sampled: bool, state: TraceState | None, is_remote: bool,
    ) -> tuple[bool, TraceState | None]:
        """A configured (non-default) sampler decides, as the SDK's tracer would ask it."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        assert self._sampler is not None
        context = None
        if parent_id:
            parent_ctx = SpanContext(trace_id, parent_id, is_remote, TraceFlags(1 if parent_sampled else 0), state)
            context = trace.set_span_in_context(NonRecordingSpan(parent_ctx))
        result = self._sampler.should_sample(context, trace_id, name, kind, attrs)
        return bool(result.decision.is_sampled()), result.trace_state  # type: ignore[no-untyped-call]

    def _end(self, span: LightSpan) -> None:
        span.end = _time_ns()
        if span.sampled:
            self._on_end(span)

    # -- host side

    async def serve(self, req: RequestLike, message: Mapping[str, Any], handler: Callable[[Any], Awaitable[None]]) -> None:
        method = message.get("method")
        method = method if isinstance(method, str) else "_OTHER"
        params = message.get("params")
        target_attr, target = _target(method, params)
        span: LightSpan | None = None
        if self.tracing:
            meta = params.get("_meta") if isinstance(params, dict) else None
            remote = _remote_parent(meta) if isinstance(meta, dict) else None
            attrs: dict[str, AttributeValue] = {MCP_METHOD_NAME: method, NETWORK_TRANSPORT: "pipe"}
            uri: Any = None
            if target is not None:
                attrs[target_attr] = target  # type: ignore[index]
                if method == "tools/call":
                    attrs[GEN_AI_OPERATION_NAME] = "execute_tool"
            elif method in _RESOURCE_METHODS and isinstance(params, dict):
                uri = params.get("uri")
            span = self._start(f"{method} {target}" if target else method, SpanKind.SERVER, attrs, None, remote)
            span.unique[JSONRPC_REQUEST_ID] = str(message.get("id"))
            if isinstance(uri, str):
                span.unique[MCP_RESOURCE_URI] = uri
        state = _Request(span)
        req_token = _REQUEST.set(state)
        start = time.perf_counter()
        try:
            await handler(message)
        finally:
            elapsed = time.perf_counter() - start
            _REQUEST.reset(req_token)
            version = req.protocol_version
            if span is not None:
                if span.sampled:
                    end = span.attrs
                    end[MCP_PROTOCOL_VERSION] = _text(version)
                    if req.era == "legacy":
                        end[MCP_SESSION_ID] = _text(req.session_id)
                    if not state.guarded and method not in _UNGUARDED:
                        end.update(principal_attributes(req.principal))
                self._end(span)
            hist = self.server_duration
            if hist is not None:
                error_type = state.error_type
                hist.record((method, version, target_attr, target, error_type), elapsed,
                            lambda: _server_metric(method, version, target_attr, target, error_type))

    async def decide(self, req: RequestLike, entry: EntryLike, verdict: Awaitable[VerdictLike]) -> VerdictLike:
        who = req.principal
        state = _REQUEST.get()
        span: LightSpan | None = None
        prev = state.current if state is not None else None
        if self.tracing:
            ident = principal_attributes(who)
            key = (entry.qualified, entry.kind, who.verified, id(ident))
            base = self._guardrail_base.get(key)
            if base is None or base[0] is not ident:
                if len(self._guardrail_base) >= _CACHE_LIMIT:
                    self._guardrail_base.clear()
                base = self._guardrail_base[key] = (ident, {
                    **_GUARDRAIL_FIXED,
                    GUARDRAIL_TARGET_SUBTYPE: _SUBTYPE.get(entry.kind, "tool_call"),
                    GUARDRAIL_TARGET_ID: _text(entry.qualified),
                    PRINCIPAL_VERIFIED: bool(who.verified),
                    **ident,
                })
            span = self._start(GUARDRAIL_SPAN, SpanKind.INTERNAL, dict(base[1]), prev)
            if state is not None:
                state.current = span
        try:
            result = await verdict
        except BaseException as exc:  # as the SDK's start_as_current_span ends it
            if span is not None:
                if isinstance(exc, Exception):
                    self._record_exception(span, exc)
                if state is not None:
                    state.current = prev
                self._end(span)
            raise
        if span is not None and state is not None:
            state.current = prev
        decided, outcome = _decided(result.decision, tuple(result.policy_ids), tuple(result.rule_ids), result.reason,
                                    entry.upstream, result.approver)
        if span is not None:
            span.attrs.update(outcome)
            if result.decision in ("approved", "rejected"):
                event: dict[str, AttributeValue] = {DECISION: decided[DECISION]}
                if result.approver:
                    event[APPROVER] = _text(result.approver)
                span.add_event("mcp_guard.approval.resolved", time.time_ns(), event)
            if state is not None:
                gkey = (id(ident), id(decided))
                guarded = self._guarded.get(gkey)
                if guarded is None or guarded[0] is not ident or guarded[1] is not decided:
                    if len(self._guarded) >= _CACHE_LIMIT:
                        self._guarded.clear()
                    guarded = self._guarded[gkey] = (ident, decided, {**ident, **decided})
                state.guarded = guarded[2]
                state.guardrail = span
                if state.span is not None:
                    state.span.attrs.update(state.guarded)
            self._end(span)
        if self.decisions is not None:
            d, u, t, k = str(result.decision), entry.upstream, entry.exposed, entry.kind
            name_attr = _NAME_ATTR.get(k)  # never a resource URI in a metric
            self.decisions.add((d, u, t, k), 1, lambda: {DECISION: d, UPSTREAM: _text(u), **({name_attr: _text(t)} if name_attr else {})})
        return result

    @staticmethod
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

    # -- upstream side

    def _client_attrs(self, upstream: UpstreamLike, method: str, target_attr: str | None, target: str | None,
                      ) -> tuple[tuple[Any, ...], Mapping[str, AttributeValue], Mapping[str, AttributeValue]]:
        """(key, span attributes, metric attributes) of a request to ``upstream``, built once per kind."""
        url = getattr(upstream.config, "url", None)
        key = (upstream.name, upstream.protocol_version, url, method, target_attr, target)
        found = self._client_base.get(key)
        if found is not None:
            return found
        attrs: dict[str, AttributeValue] = {
            MCP_METHOD_NAME: method,
            MCP_PROTOCOL_VERSION: _text(upstream.protocol_version),
            NETWORK_TRANSPORT: "tcp" if url else "pipe",
            UPSTREAM: _text(upstream.name),
        }
        if url:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if parts.hostname:
                attrs[SERVER_ADDRESS] = parts.hostname
                attrs[SERVER_PORT] = parts.port or (443 if parts.scheme == "https" else 80)
        if target is not None:
            attrs[target_attr] = target  # type: ignore[index]
            if method == "tools/call":
                attrs[GEN_AI_OPERATION_NAME] = "execute_tool"
        if len(self._client_base) >= _CACHE_LIMIT:
            self._client_base.clear()
        found = self._client_base[key] = (key, attrs, dict(attrs))
        return found

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
        ckey, base, metric = self._client_attrs(upstream, method, target_attr, target)
        out = dict(params) if params else {}
        meta = out.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.pop("baggage", None)  # the guard never forwards baggage it did not vet
        span: LightSpan | None = None
        if self.tracing:
            attrs = dict(base)
            state = _REQUEST.get()
            if state is not None and state.guarded:
                attrs.update(state.guarded)
            span = self._start(f"{method} {target}" if target else method, SpanKind.CLIENT, attrs,
                               state.current if state is not None else None)
            meta["traceparent"] = _traceparent(span)
            if span.trace_state:
                meta["tracestate"] = span.trace_state.to_header()
        if meta:
            out["_meta"] = meta
        noted = on_id
        if span is not None:
            unique = span.unique

            def noted(request_id: int) -> None:
                unique[JSONRPC_REQUEST_ID] = str(request_id)
                if on_id is not None:
                    on_id(request_id)

        start = time.perf_counter()
        error_type: str | None = None
        try:
            response = await send(method, out or None, timeout=timeout, on_id=noted)
            error_type, code, text = _error_of(response)
            if error_type is not None and span is not None:
                span.attrs[ERROR_TYPE] = error_type
                if code is not None:
                    span.attrs[RPC_RESPONSE_STATUS_CODE] = code
                span.set_error(text)
            return response
        except BaseException as exc:
            error_type = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__qualname__
            if span is not None:
                span.attrs[ERROR_TYPE] = error_type
                span.set_error(str(exc) or error_type)
            raise
        finally:
            if span is not None:
                self._end(span)
            hist = self.client_duration
            if hist is not None:
                elapsed = time.perf_counter() - start
                if error_type is None:
                    hist.record(ckey, elapsed, lambda: metric)
                else:
                    failed = error_type
                    hist.record((ckey, failed), elapsed, lambda: {**metric, ERROR_TYPE: failed})

    # -- lifecycle

    def flush(self, timeout: float = DEFAULT_EXPORT_TIMEOUT) -> bool:
        ok = True
        if self.processor is not None:
            ok = self.processor.force_flush(int(timeout * 1000))
        if self.metrics is not None:
            ok = self.metrics.force_flush(timeout * 1000) and ok
        return ok

    def shutdown(self) -> None:
        if self.processor is not None:
            self.processor.shutdown()
        if self.metrics is not None:
            self.metrics.shutdown(timeout_millis=self.settings.timeout * 1000)


def _span_exporter(settings: Settings) -> SpanExporter | None:
    if settings.traces == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)  # stdout is the MCP stream
    if settings.traces == "otlp":
        return LightOTLPSpanExporter(endpoint=settings.traces_endpoint, timeout=settings.timeout)
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


def serve(req: RequestLike, message: dict[str, Any], handler: Callable[[Any], Coroutine[Any, Any, None]]) -> Coroutine[Any, Any, None]:
    """The coroutine that serves one host request, inside its SERVER span when telemetry is on."""
    tel = _active
    return handler(message) if tel is None else tel.serve(req, message, handler)


def decision(req: RequestLike, entry: EntryLike, verdict: Awaitable[Any]) -> Awaitable[Any]:
    """Await a verdict inside a ``run_guardrail mcp-guard`` span (and count it); the same span
    for a tool, a resource or a prompt."""
    tel = _active
    return verdict if tel is None else tel.decide(req, entry, verdict)


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
    if span is not None:
        span.attrs[ERROR_TYPE] = error_type
        if code is not None:
            span.attrs[RPC_RESPONSE_STATUS_CODE] = code
        span.set_error(text)


def note_tools(listed: int, hidden: int) -> None:
    """``tools/list``: how many tools the host saw and how many policy or grant hid."""
    state = _REQUEST.get()
    if state is not None and state.span is not None:
        state.span.attrs[TOOLS_LISTED] = int(listed)
        state.span.attrs[TOOLS_HIDDEN] = int(hidden)


def audit_ids() -> dict[str, str]:
    """``trace_id``/``span_id`` for the audit record of the current decision ({} when tracing is off)."""
    state = _REQUEST.get()
    if state is None:
        return {}
    span = state.guardrail or state.span
    if span is None:
        return {}
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}


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
    "LightSpan",
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
