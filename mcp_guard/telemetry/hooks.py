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

The context managers themselves are ``scopes``; what they record into (span pipeline, instruments,
shared attribute sets) is ``recorder``.  This module is the face the proxy holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from mcp_guard.telemetry.settings import DEFAULT_EXPORT_TIMEOUT, Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from mcp_guard.request import RequestContext
    from mcp_guard.telemetry.recorder import Upstream
    from mcp_guard.telemetry.scopes import DecisionSpan, RequestTrace, UpstreamCall


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


def _no_scope(req: RequestContext) -> _Untraced:
    return _UNTRACED


def _off_upstream_call(upstream: Upstream, method: str, params: Mapping[str, Any] | None) -> _Untraced:
    return _UNTRACED


class Hooks:
    """Telemetry off: every hook is a shared no-op context manager.

    The hooks are attributes holding a callable, not methods: ``Telemetry``'s open their scope
    in one call (the scope's class with its recorder bound), without a frame of the hook's own."""

    tracing = False

    def __init__(self) -> None:
        self.request: Callable[[RequestContext], _Untraced | RequestTrace] = _no_scope
        self.decision: Callable[[RequestContext], _Untraced | DecisionSpan] = _no_scope
        self.upstream_call: Callable[[Upstream, str, Mapping[str, Any] | None], _Untraced | UpstreamCall] = _off_upstream_call

    def flush(self, timeout: float = DEFAULT_EXPORT_TIMEOUT) -> bool:
        return True

    def shutdown(self) -> None:
        return None


OFF = Hooks()


# --------------------------------------------------------------------------- on


class Telemetry(Hooks):
    """Telemetry on: each hook opens a scope that records into this process's ``Recorder``.

    The scopes and the recorder (and the OpenTelemetry SDK and exporters behind them) are imported
    here, when telemetry is on: a guard with telemetry off starts without them."""

    def __init__(
        self,
        settings: Settings,
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
        scrape_reader: MetricReader | None = None,
    ) -> None:
        from mcp_guard.telemetry import scopes
        from mcp_guard.telemetry.recorder import Recorder

        super().__init__()
        recorder = self.recorder = Recorder(settings, span_exporter=span_exporter, metric_reader=metric_reader,
                                            scrape_reader=scrape_reader)
        self.tracing = recorder.tracing
        self.request = partial(scopes.RequestTrace, recorder)
        self.decision = partial(scopes.DecisionSpan, recorder)
        self.upstream_call = partial(scopes.UpstreamCall, recorder)

    def flush(self, timeout: float = DEFAULT_EXPORT_TIMEOUT) -> bool:
        return self.recorder.flush(timeout)

    def shutdown(self) -> None:
        self.recorder.shutdown()


__all__ = ["OFF", "Hooks", "Telemetry"]
