"""What one guard process records telemetry into: the span pipeline, the instruments, and the
attribute sets every span and point shares.

A span's attributes are one dict shared by every span with the same set (built once, never changed
afterwards; a span that must differ copies it first), so the hot path copies nothing and the OTLP
encoder finds the set's encoded bytes by the dict's identity.  The caches here build each set once
per distinct input and are bounded (cleared at ``CACHE_LIMIT`` entries).  The per-request context
managers (``scopes``) read and write through a ``Recorder``; ``hooks.Telemetry`` hands them one.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from mcp_guard import __version__
from mcp_guard.telemetry import attributes as a
from mcp_guard.telemetry.export import (
    NOISY_LOGGERS,
    BoundedBatchProcessor,
    Throttle,
)
from mcp_guard.telemetry.export import (
    span_exporter as configured_span_exporter,
)
from mcp_guard.telemetry.metrics import (
    DURATION_BUCKETS,
    DurationHistogram,
    Instruments,
    MonotonicCounter,
)
from mcp_guard.telemetry.metrics import (
    metric_reader as configured_metric_reader,
)
from mcp_guard.telemetry.settings import DEFAULT_EXPORT_TIMEOUT, Settings
from mcp_guard.telemetry.spans import LightSpan, sampler
from mcp_guard.telemetry.wire import Finished, record_sender

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import SpanKind, TraceState
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.identity import Principal
    from mcp_guard.request import Target

log = logging.getLogger("mcp_guard.telemetry")

CACHE_LIMIT = 4096


class Upstream(Protocol):
    """What a CLIENT span says of the upstream it went to (``upstreams.Upstream`` has these):
    telemetry sits below the upstream connections and does not import them."""

    name: str
    protocol_version: str

    @property
    def config(self) -> object: ...


class Recorder:
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
        self.processor: BoundedBatchProcessor[Finished] | None = None
        exporter = span_exporter or configured_span_exporter(settings)
        if exporter is not None:
            self.processor = BoundedBatchProcessor(
                record_sender(exporter, self.resource, self.scope),  # the spans are made there, off the loop
                exporter.shutdown,
                max_queue_size=settings.max_queue_size,
                max_batch_size=settings.max_batch_size,
                schedule_delay=settings.schedule_delay,
            )
        self.tracing = self.processor is not None
        self.sampler = sampler(settings.sampler, settings.sampler_arg) if self.tracing else None
        self.end = self.processor.on_end if self.processor is not None else _ignore  # a sampled span's record, ended
        self.metrics: Instruments | None = None
        self.server_duration: DurationHistogram | None = None
        self.client_duration: DurationHistogram | None = None
        self.decisions: MonotonicCounter | None = None
        reader = metric_reader or configured_metric_reader(settings) or scrape_reader
        if reader is not None:
            self.metrics = Instruments(self.resource, self.scope, reader, scrape_reader)
            self.server_duration = self.metrics.histogram(
                a.SERVER_DURATION, "s", "Duration of MCP requests the guard served for the host.", DURATION_BUCKETS)
            self.client_duration = self.metrics.histogram(
                a.CLIENT_DURATION, "s", "Duration of MCP requests the guard sent to upstreams.", DURATION_BUCKETS)
            self.decisions = self.metrics.counter(a.DECISIONS, "{decision}", "Tool-call decisions by outcome.")
        # attribute sets built once per distinct input: (the cached mapping, what was built from it),
        # keyed by id and checked by identity
        # (all of them used on the span export thread only)
        self._guardrail_base: dict[tuple[Any, ...], tuple[Mapping[str, AttributeValue], dict[str, AttributeValue]]] = {}
        self._client_base: dict[tuple[Any, ...], tuple[tuple[Any, ...], Mapping[str, AttributeValue], Mapping[str, AttributeValue]]] = {}
        self._server_start: dict[tuple[str, str | None, str | None], dict[str, AttributeValue]] = {}
        self._server_end: dict[tuple[Any, ...], tuple[Mapping[str, AttributeValue], dict[str, AttributeValue]]] = {}
        self._merged: dict[tuple[int, int], tuple[Mapping[str, AttributeValue], Mapping[str, AttributeValue],
                                                  dict[str, AttributeValue]]] = {}
        self._numbers: dict[tuple[Any, ...], int] = {}  # ``number``: on the span export thread only
        self._counter = itertools.count()
        for name in NOISY_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, Throttle) for f in logger.filters):
                logger.addFilter(Throttle())

    def number(self, parts: tuple[Any, ...]) -> int:
        """A number for ``parts`` (hashable), the same while it is remembered and never given to
        anything else (a cleared table hands out new numbers), so it can stand for them in a key."""
        found = self._numbers.get(parts)
        if found is None:
            if len(self._numbers) >= CACHE_LIMIT:
                self._numbers.clear()
            found = self._numbers[parts] = next(self._counter)
        return found

    def merged(self, left: Mapping[str, AttributeValue], right: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        """``{**left, **right}``, built once per pair of (cached, unchanging) attribute sets."""
        key = (id(left), id(right))
        found = self._merged.get(key)
        if found is None or found[0] is not left or found[1] is not right:
            if len(self._merged) >= CACHE_LIMIT:
                self._merged.clear()
            found = self._merged[key] = (left, right, {**left, **right})
        return found[2]

    @staticmethod
    def server_start_attrs(method: str, target_attr: str | None, target: str | None) -> dict[str, AttributeValue]:
        """The SERVER span's attributes known when a request arrives."""
        attrs: dict[str, AttributeValue] = {a.MCP_METHOD_NAME: method, a.NETWORK_TRANSPORT: "pipe"}
        if target_attr is not None and target is not None:
            attrs[target_attr] = target
            if method == "tools/call":
                attrs[a.GEN_AI_OPERATION_NAME] = "execute_tool"
        return attrs

    def server_start(self, method: str, target_attr: str | None, target: str | None) -> dict[str, AttributeValue]:
        """``server_start_attrs``, built once per kind of request."""
        key = (method, target_attr, target)
        attrs = self._server_start.get(key)
        if attrs is None:
            if len(self._server_start) >= CACHE_LIMIT:
                self._server_start.clear()
            attrs = self._server_start[key] = self.server_start_attrs(method, target_attr, target)
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
            if len(self._server_end) >= CACHE_LIMIT:
                self._server_end.clear()
            found = self._server_end[key] = (who, end)
        if private:
            span.attrs.update(found[1])  # a span marked with its error has its own copy already
        else:
            span.attrs = self.merged(span.attrs, found[1])

    @staticmethod
    def guardrail_attrs(target: Target, who: Principal, ident: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        """The ``run_guardrail`` span's attributes known before the verdict."""
        return {
            **a.GUARDRAIL_FIXED,
            a.GUARDRAIL_TARGET_SUBTYPE: a.SUBTYPE.get(target.kind, "tool_call"),
            a.GUARDRAIL_TARGET_ID: a.text(target.qualified),
            a.PRINCIPAL_VERIFIED: bool(who.verified),
            **ident,
        }

    def guardrail_base(self, target: Target, who: Principal) -> dict[str, AttributeValue]:
        """``guardrail_attrs``, built once per target and principal."""
        ident = a.principal_attributes(who)
        key = (target.qualified, target.kind, who.verified, id(ident))
        base = self._guardrail_base.get(key)
        if base is None or base[0] is not ident:
            if len(self._guardrail_base) >= CACHE_LIMIT:
                self._guardrail_base.clear()
            base = self._guardrail_base[key] = (ident, self.guardrail_attrs(target, who, ident))
        return base[1]

    @staticmethod
    def client_attrs_of(upstream: Upstream, version: str, method: str, target_attr: str | None, target: str | None,
                        ) -> dict[str, AttributeValue]:
        """The attributes of a request to ``upstream`` (its CLIENT span's and its duration point's)."""
        url = getattr(upstream.config, "url", None)
        attrs: dict[str, AttributeValue] = {
            a.MCP_METHOD_NAME: method,
            a.MCP_PROTOCOL_VERSION: a.text(version),
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
        return attrs

    def client_attrs(self, upstream: Upstream, version: str, method: str, target_attr: str | None, target: str | None,
                     ) -> tuple[tuple[Any, ...], Mapping[str, AttributeValue], Mapping[str, AttributeValue]]:
        """(key, span attributes, metric attributes) of a request to ``upstream``, built once per kind."""
        key = (upstream.name, version, getattr(upstream.config, "url", None), method, target_attr, target)
        found = self._client_base.get(key)
        if found is not None:
            return found
        attrs = self.client_attrs_of(upstream, version, method, target_attr, target)
        if len(self._client_base) >= CACHE_LIMIT:
            self._client_base.clear()
        found = self._client_base[key] = (key, attrs, dict(attrs))
        return found

    def sample(
        self, name: str, kind: SpanKind, attrs: Mapping[str, AttributeValue], trace_id: int, parent_id: int,
        parent_sampled: bool, state: TraceState | None, is_remote: bool,
    ) -> tuple[bool, TraceState | None]:
        """A configured (non-default) sampler decides, as the SDK's tracer would ask it."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        assert self.sampler is not None
        context = None
        if parent_id:
            parent_ctx = SpanContext(trace_id, parent_id, is_remote, TraceFlags(1 if parent_sampled else 0), state)
            context = trace.set_span_in_context(NonRecordingSpan(parent_ctx))
        result = self.sampler.should_sample(context, trace_id, name, kind, attrs)
        return bool(result.decision.is_sampled()), result.trace_state  # type: ignore[no-untyped-call]

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



def _ignore(record: Finished) -> None:
    return None
