"""Which transport the OTLP/HTTP exporters POST with: the guard's lean one where it changes nothing.

``post.LeanTransport`` (one kept-alive socket, the request written once per header set, the answer
framed by llhttp) replaces the SDK's transport only where nothing of a transport can change the
request: a plain ``http://`` collector (no TLS, so no CA bundle or client certificate), no user
name or password in the URL, and ``Settings.plain_http`` (no proxy variable, no ``.netrc``, no
credential provider, which the SDK's default ``requests`` transport would apply).  Everywhere
else, and with an SDK older than the pluggable transports, the exporter keeps its default.
"""

from __future__ import annotations

from typing import Any


def lean_transport(endpoint: str | None, plain_http: bool) -> dict[str, Any]:
    """Keyword arguments for an SDK OTLP/HTTP exporter bound for ``endpoint``: ``{"_transport": ...}``
    when the lean transport sends exactly what the SDK's would, else ``{}`` (the SDK's default)."""
    if not plain_http or not endpoint:
        return {}
    try:
        from mcp_guard.telemetry.post import LeanTransport
    except ImportError:  # an SDK before the pluggable transports
        return {}
    return {"_transport": LeanTransport(endpoint)} if LeanTransport.suits(endpoint) else {}


__all__ = ["lean_transport"]
