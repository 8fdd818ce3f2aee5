"""Floor reference for an HTTP MCP proxy: forwards each POST to the upstream unchanged.

The same stack as ``mcp-guard serve`` (uvicorn + Starlette in front, httpx2 keep-alive client to
the upstream) and nothing else: no JSON parsing, no sessions of its own (the upstream's
``Mcp-Session-Id`` passes through both ways), no policy. What it costs per request is the price
of the two HTTP hops in Python; what the guard costs beyond it is mediation.

Usage: python http_passthrough.py --port PORT --upstream-url URL
"""

from __future__ import annotations

import argparse

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FORWARDED = ("content-type", "accept", "mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name")
RETURNED = ("content-type", "mcp-session-id")


def make_app(upstream: str) -> Starlette:
    client = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=512, max_keepalive_connections=512), timeout=60)

    async def endpoint(request: Request) -> Response:
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        answer = await client.post(upstream, content=await request.body(), headers=headers)
        out = {k: v for k in RETURNED if (v := answer.headers.get(k)) is not None}
        return Response(answer.content, status_code=answer.status_code, headers=out)

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream-url", required=True)
    args = ap.parse_args()
    uvicorn.run(make_app(args.upstream_url), host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
