"""OpenTelemetry for the guard: who did what, on whose behalf, under which rule (docs/telemetry.md).

One SERVER span per host request (parented from the host's ``params._meta`` W3C trace context), one
INTERNAL ``run_guardrail mcp-guard`` span per decision, one CLIENT span per upstream request (its
context injected into the upstream's ``params._meta``), so host → guard → upstream is one trace.
Plus the MCP operation-duration histograms and a ``mcp_guard.decisions`` counter.

Read it in this order:

- ``settings``: the typed settings (``mcp_guard.config.telemetry_settings`` works them out from the
  ``telemetry:`` block and the ``OTEL_*`` variables; nothing here reads the environment);
- ``attributes``: the semantic-convention names and the attribute sets built from them;
- ``hooks``: what the proxy holds (``OFF``, or ``Telemetry``), whose hooks open the ``scopes``: the
  context managers the proxy wraps requests, decisions and upstream calls in; on the event loop
  they only note ids, times and outcomes in ``records`` and append them to the queues of the
  ``recorder`` (span pipeline, instruments, shared attribute sets), whose export threads build the
  spans and metric points from them;
- ``spans``: light spans as the encoder takes them, W3C trace context and sampling;
- ``export``: the direct OTLP/protobuf encoder and the bounded export thread;
- ``wire``: a record's span written to OTLP bytes from blocks cached per kind of call;
- ``metrics``: the instruments, aggregated in plain objects for any SDK metric reader.

Design choices: spans are light records encoded to OTLP directly (the SDK's span objects and encoder
cost several hundred µs per call); no tracer provider, never the global one, so the ``mcp`` SDK's
own instrumentation stays a no-op and nothing is emitted twice; only ``traceparent``/``tracestate``
are injected upstream, never ``baggage`` (principal and grant data must not leak through it); off
unless configured; a dead or slow collector never delays or fails a call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mcp_guard.telemetry.hooks import OFF, Hooks, Telemetry
from mcp_guard.telemetry.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("mcp_guard.telemetry")


def start(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    scrape_reader: MetricReader | None = None,
) -> Hooks:
    """The telemetry of one guard process: ``OFF`` when nothing is configured.

    ``span_exporter`` / ``metric_reader`` replace the configured ones (tests, benchmarks).  The
    caller owns the result and calls its ``shutdown`` when the guard stops.  ``scrape_reader``
    (the Prometheus reader of ``serve.admin``) is added beside the configured ones: with it the
    instruments record even when no exporter is configured.
    """
    if span_exporter is not None or metric_reader is not None:
        settings = Settings(
            traces="custom" if span_exporter is not None else "none",
            metrics="custom" if metric_reader is not None else "none",
            service_name=settings.service_name,
            max_queue_size=settings.max_queue_size,
            max_batch_size=settings.max_batch_size,
            schedule_delay=settings.schedule_delay,
            sampler=settings.sampler,
            sampler_arg=settings.sampler_arg,
        )
    if not settings.enabled and scrape_reader is None:
        return OFF
    tel = Telemetry(settings, span_exporter=span_exporter, metric_reader=metric_reader, scrape_reader=scrape_reader)
    log.info(
        "telemetry on: traces %s%s, metrics %s",
        settings.traces,
        f" -> {settings.traces_endpoint}" if settings.traces == "otlp" else "",
        settings.metrics + (" + prometheus scrape" if scrape_reader is not None else ""),
    )
    return tel


__all__ = ["OFF", "Hooks", "Settings", "Telemetry", "start"]
