"""Which exporters the OTEL_* variables and the ``telemetry:`` block select, and what "off" costs."""

from __future__ import annotations

import re

import pytest

from mcp_guard import telemetry
from mcp_guard.config import TelemetryConfig, telemetry_settings
from mcp_guard.errors import ConfigError
from mcp_guard.request import RequestContext


def test_nothing_configured_means_off() -> None:
    s = telemetry_settings(None, {})
    assert (s.traces, s.metrics, s.enabled) == ("none", "none", False)
    assert telemetry.start(s) is telemetry.OFF


def test_an_otlp_endpoint_alone_turns_on_otlp() -> None:
    s = telemetry_settings(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert (s.traces, s.metrics) == ("otlp", "otlp")
    assert s.traces_endpoint == "http://collector:4318/v1/traces"
    assert s.metrics_endpoint == "http://collector:4318/v1/metrics"


def test_signal_specific_variables() -> None:
    s = telemetry_settings(None, {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "guard-a",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:1/custom",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        "OTEL_BSP_SCHEDULE_DELAY": "250",
    })
    assert (s.traces, s.metrics, s.service_name) == ("console", "none", "guard-a")
    assert s.traces_endpoint == "http://x:1/custom"
    assert (s.timeout, s.max_queue_size, s.schedule_delay) == (0.5, 100, 0.25)


def test_the_telemetry_block_overrides_the_environment() -> None:
    cfg = TelemetryConfig(traces_exporter="otlp", metrics_exporter="none", endpoint="http://phoenix:6006",
                          service_name="from-yaml")
    s = telemetry_settings(cfg, {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "from-env",
                                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"})
    assert (s.traces, s.metrics, s.service_name) == ("otlp", "none", "from-yaml")
    assert s.traces_endpoint == "http://phoenix:6006/v1/traces"


def test_sdk_disabled_wins() -> None:
    s = telemetry_settings(TelemetryConfig(traces_exporter="otlp"), {"OTEL_SDK_DISABLED": "true"})
    assert not s.enabled


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'"),
        ({"OTEL_METRICS_EXPORTER": "otlp,console"}, "only one exporter"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT='soon' is not a number"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, "must be positive"),
    ],
)
def test_bad_values_are_one_clear_sentence(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        telemetry_settings(None, env)


def test_bad_value_in_the_block_names_the_key() -> None:
    with pytest.raises(ConfigError, match=re.escape("telemetry.traces_exporter: unknown exporter 'zipkin'")):
        telemetry_settings(TelemetryConfig(traces_exporter="zipkin"), {})


def test_the_sampler_comes_from_the_environment_through_config() -> None:
    s = telemetry_settings(None, {"OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert (s.sampler, s.sampler_arg) == ("traceidratio", "0.25")
    assert telemetry_settings(None, {}).sampler == "parentbased_always_on"


def test_telemetry_never_reads_the_environment() -> None:
    """config.py is the only module that reads the environment; the package takes typed settings."""
    import pathlib

    package = pathlib.Path(telemetry.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "os.environ" not in text and "getenv" not in text, source.name


def test_off_hooks_cost_next_to_nothing() -> None:
    """With telemetry off every hook is one shared, stateless no-op context manager: no span, no
    allocation, nothing but a method call (its cost is in bench/, not timed here)."""
    hooks = telemetry.start(telemetry_settings(None, {}))
    assert hooks is telemetry.OFF
    req = RequestContext("s", None, None, None, "2025-11-25", {"id": 1}, {}, {})  # type: ignore[arg-type]
    params = {"name": "x"}
    on_id = print

    shared = hooks.request(req)
    assert type(shared).__slots__ == ()  # no per-call state to allocate or fill
    for _ in range(3):
        with hooks.request(req) as traced:
            assert traced is shared
            with hooks.decision(req) as decided:
                assert decided is shared
            with hooks.upstream_call(None, "tools/call", None) as call:  # type: ignore[arg-type]
                assert call is shared
                assert call.inject(params) is params  # the request goes on untouched
                assert call.noting(on_id) is on_id
                call.respond({"result": {}})
            traced.respond({"result": {}})
