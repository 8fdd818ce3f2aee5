"""``serve.admin``: the operations listener, on a port of its own so probes and scrapes never pass
the bearer-token check of ``/mcp`` and ``/mcp`` is never exposed where only probes belong.

- ``GET /healthz``: the process is alive (``{"status": "ok"}``, 200) - also served on the main port;
- ``GET /readyz``: 200 when the guard can serve; 503 with a JSON body naming what is missing
  (policies, the state store, a ``required: true`` upstream, or a drain in progress);
- ``GET /metrics``: the guard's OpenTelemetry instruments in the Prometheus text format, converted
  by the OpenTelemetry Prometheus exporter (``opentelemetry-exporter-prometheus``) and rendered by
  ``prometheus_client``, from a registry of this process alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from prometheus_client import CollectorRegistry
    from starlette.types import ASGIApp

log = logging.getLogger("mcp_guard.admin")

Missing = dict[str, str]  # {"component": "upstream fs", "reason": "down: ..."}
ReadyCheck = Callable[[], Awaitable[list[Missing]]]

ALIVE: dict[str, Any] = {"status": "ok"}


def prometheus_reader() -> tuple[MetricReader, CollectorRegistry]:
    """A Prometheus reader on a registry of its own (never the process-global one, so nothing else
    registered there leaks into the scrape and two guards in one process do not collide)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    return PrometheusMetricReader(registry=registry), registry


async def healthz(_: Request) -> Response:
    return JSONResponse(ALIVE, headers={"Cache-Control": "no-store"})


class Admin:
    """The admin listener's ASGI app: ``ready`` says what is missing, ``registry`` holds the metrics."""

    def __init__(self, ready: ReadyCheck, registry: CollectorRegistry | None) -> None:
        self.ready = ready
        self.registry = registry
        self.app: ASGIApp = Starlette(routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ])

    async def readyz(self, _: Request) -> Response:
        try:
            missing = await self.ready()
        except Exception as exc:  # a check that cannot run is a reason not to be ready, never a 500
            log.warning("the readiness check failed: %s", exc)
            missing = [{"component": "readiness check", "reason": f"it failed: {exc}"}]
        if missing:
            return JSONResponse({"status": "not ready", "missing": missing}, status_code=503,
                                headers={"Cache-Control": "no-store"})
        return JSONResponse({"status": "ready"}, headers={"Cache-Control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        from prometheus_client.exposition import choose_encoder

        if self.registry is None:
            return Response("metrics are off\n", status_code=404, media_type="text/plain")
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(self.registry), headers={"Content-Type": content_type, "Cache-Control": "no-store"})


__all__ = ["ALIVE", "Admin", "Missing", "ReadyCheck", "healthz", "prometheus_reader"]
