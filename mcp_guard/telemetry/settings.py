"""The effective telemetry settings, as one typed value.

Telemetry never reads the environment: ``mcp_guard.config.telemetry_settings`` works these out
from the ``telemetry:`` block over the standard ``OTEL_*`` variables and hands them here.  (The
SDK's OTLP exporters still read their own ``OTEL_EXPORTER_OTLP_*`` headers, certificates and
compression variables when they are built, as they do in any OpenTelemetry program.)
"""

from __future__ import annotations

from dataclasses import dataclass

COMPONENT = "mcp-guard"
EXPORTERS = ("otlp", "console", "none")
DEFAULT_EXPORT_TIMEOUT = 3.0  # seconds per OTLP request; the standard 10 s default is too patient
DEFAULT_QUEUE = 2048
DEFAULT_BATCH = 512
DEFAULT_DELAY = 1.0
DEFAULT_METRIC_INTERVAL = 60.0
DEFAULT_SAMPLER = "parentbased_always_on"


@dataclass(frozen=True, slots=True)
class Settings:
    """Which exporters run where, and how the export queue and sampler behave."""

    traces: str = "none"  # otlp | console | none | custom (an exporter passed in by a test)
    metrics: str = "none"
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    service_name: str = COMPONENT
    timeout: float = DEFAULT_EXPORT_TIMEOUT
    max_queue_size: int = DEFAULT_QUEUE
    max_batch_size: int = DEFAULT_BATCH
    schedule_delay: float = DEFAULT_DELAY
    metric_interval: float = DEFAULT_METRIC_INTERVAL
    sampler: str = DEFAULT_SAMPLER  # an ``OTEL_TRACES_SAMPLER`` name
    sampler_arg: str = ""  # ``OTEL_TRACES_SAMPLER_ARG``
    plain_http: bool = False  # no proxy variable and no ``.netrc``: an http:// collector may get the lean transport

    @property
    def enabled(self) -> bool:
        return self.traces != "none" or self.metrics != "none"


OFF = Settings()

__all__ = ["OFF", "Settings"]
