"""What the guard reads from its environment, apart from ``${VAR}`` in guard.yaml: the standard
``OTEL_*`` variables, ``$BROWSER``, proxies, a stdio upstream's inherited variables, the grant
chain given as ``MCP_GUARD_GRANT`` or ``@file``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mcp_guard.config.model import CHILD_ENV, CHILD_ENV_WINDOWS, GuardConfig, TelemetryConfig, UpstreamConfig
from mcp_guard.errors import ConfigError

if TYPE_CHECKING:
    from mcp_guard.telemetry.settings import Settings as TelemetrySettings


def _signal_endpoint(base: str, signal: str) -> str:
    return base.rstrip("/") + f"/v1/{signal}"


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
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
    from mcp_guard.telemetry.settings import EXPORTERS

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


def telemetry_settings(config: TelemetryConfig | None = None, environ: Mapping[str, str] | None = None) -> TelemetrySettings:
    """The effective telemetry settings: the ``telemetry:`` block over the standard ``OTEL_*``
    variables; raises ``ConfigError`` naming the variable or key that is wrong."""
    from mcp_guard.telemetry.settings import (
        COMPONENT,
        DEFAULT_BATCH,
        DEFAULT_DELAY,
        DEFAULT_EXPORT_TIMEOUT,
        DEFAULT_METRIC_INTERVAL,
        DEFAULT_QUEUE,
        DEFAULT_SAMPLER,
    )
    from mcp_guard.telemetry.settings import Settings as TelemetrySettings

    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TelemetrySettings()
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
    return TelemetrySettings(
        traces=traces,
        metrics=metrics,
        traces_endpoint=traces_ep,
        metrics_endpoint=metrics_ep,
        service_name=(config.service_name if config else None) or env.get("OTEL_SERVICE_NAME") or COMPONENT,
        # the spec's timeout variables are in seconds for OTLP, milliseconds for the batch processor
        timeout=_positive(env, timeout_var, DEFAULT_EXPORT_TIMEOUT),
        max_queue_size=int(_positive(env, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)),
        max_batch_size=int(_positive(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH)),
        schedule_delay=_positive(env, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY * 1000) / 1000,
        metric_interval=_positive(env, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_METRIC_INTERVAL * 1000) / 1000,
        sampler=env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER,
        sampler_arg=env.get("OTEL_TRACES_SAMPLER_ARG", "").strip(),
        plain_http=_plain_http(env),
    )


PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
# a ``requests`` session the SDK's OTLP/HTTP exporters load from an entry point (it may sign or authorise requests)
CREDENTIAL_PROVIDERS = ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
                        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
                        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER")


def _plain_http(env: Mapping[str, str]) -> bool:
    """Whether an OTLP POST to an ``http://`` collector is the same from any HTTP client: no proxy
    variable, no ``.netrc`` and no credential provider (which the SDK's default ``requests``
    transport would apply), and not macOS (where ``requests`` also reads the system's proxy settings)."""
    if sys.platform == "darwin" or any(env.get(name) for name in (*PROXY_VARIABLES, "NETRC", *CREDENTIAL_PROVIDERS)):
        return False
    home = env.get("HOME") or os.path.expanduser("~")
    return not any(os.path.exists(os.path.join(home, name)) for name in (".netrc", "_netrc"))


def browser_command(environ: Mapping[str, str] | None = None) -> str | None:
    """``$BROWSER``: when set, ``run`` may open an authorization page itself (else it asks for ``login``)."""
    env = os.environ if environ is None else environ
    return env.get("BROWSER") or None


def has_browser(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``login`` should open a browser: ``$BROWSER``, or a desktop session (never a
    console browser taking over the terminal the URL is printed on)."""
    env = os.environ if environ is None else environ
    return bool(env.get("BROWSER") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32"))


def upstream_proxied(url: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (minus ``NO_PROXY``) apply to an HTTP
    upstream's URL: such an upstream is reached through httpx2, which speaks to proxies."""
    env = os.environ if environ is None else environ
    lowered = {k.lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    u = urlsplit(url)
    if not (lowered.get(f"{u.scheme}_proxy") or lowered.get("all_proxy")):
        return False
    no_proxy = lowered.get("no_proxy", "")
    if no_proxy == "*":
        return False
    host = u.hostname or ""
    for entry in (e.strip().lower() for e in no_proxy.split(",") if e.strip()):
        bare = entry.lstrip(".").split(":")[0]
        if host == bare or host.endswith("." + bare):
            return False
    return True


def upstream_environment(config: UpstreamConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A stdio upstream's whole environment: the essentials (``CHILD_ENV``), what its
    ``env_passthrough`` names, then its own ``env``.  Nothing else of the guard's environment — other
    upstreams' tokens, telemetry credentials, the approvals key — and never ``MCP_GUARD_*``."""
    env = os.environ if environ is None else environ
    patterns = CHILD_ENV + (CHILD_ENV_WINDOWS if os.name == "nt" else ()) + config.env_passthrough
    names = {p for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    out = {k: v for k, v in env.items() if (k in names or k.startswith(prefixes)) and not k.startswith("MCP_GUARD_")}
    out.update(config.env)
    return out


def check_grant_variable(config: GuardConfig, environ: Mapping[str, str] | None = None) -> None:
    """``MCP_GUARD_GRANT`` set for a guard.yaml without a grant would be ignored, and the agent would
    run with the configuration's wider authority: refuse to start instead."""
    env = os.environ if environ is None else environ
    if env.get("MCP_GUARD_GRANT", "").strip() and not config.identity.grant:
        where = str(config.source) if config.source is not None else "the configuration"
        raise ConfigError(
            f"{where}: MCP_GUARD_GRANT is set but identity.grant is not, so the grant chain would be ignored "
            "and the agent would run with the configuration's own authority; add `grant: ${MCP_GUARD_GRANT}` "
            "under `identity:` (or unset MCP_GUARD_GRANT)"
        )


def read_token(value: str) -> str:
    """A grant chain given literally or as ``@file`` (a file holding it); an unreadable file is a ConfigError."""
    if not value.startswith("@"):
        return value.strip()
    try:
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the grant chain {value[1:]}: {exc.strerror or exc}") from None
