"""FastMCP (4.x) stdio proxy in front of an upstream stdio MCP server.

Default upstream: ``<this python> echo_server.py`` (next to this file); the
upstream inherits this process's full environment, so ECHO_TOOLS etc. reach it.

Usage:
  python fastmcp_proxy.py [--middleware N] [--reuse-session] [-- UPSTREAM_CMD ...]
  python fastmcp_proxy.py --http PORT --upstream-url URL [--middleware N] [--reuse-session]

  --middleware N    add N no-op FastMCP middlewares (a guard adds middleware)
  --reuse-session   hand create_proxy an already-connected Client, so every
                    request reuses one backend session (fastmcp's documented
                    opt-in; default is a fresh Client per request that shares
                    the kept-alive stdio subprocess)
  --http PORT       serve the proxy over Streamable HTTP at 127.0.0.1:PORT/mcp
                    (plain JSON answers, like mcp-guard serve) instead of stdio
  --upstream-url U  proxy a Streamable HTTP upstream at U instead of a command
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import anyio
from fastmcp.client.transports import StdioTransport
from fastmcp.server import create_proxy
from fastmcp.server.middleware import Middleware

HERE = Path(__file__).resolve().parent


class NoopMiddleware(Middleware):
    """Passes every message straight through (overrides the hooks a guard would use)."""

    async def on_call_tool(self, context, call_next):
        return await call_next(context)

    async def on_list_tools(self, context, call_next):
        return await call_next(context)


def parse() -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:]
    upstream: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, upstream = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(prog="fastmcp_proxy.py")
    ap.add_argument("--middleware", type=int, default=0)
    ap.add_argument("--reuse-session", action="store_true")
    ap.add_argument("--http", type=int, metavar="PORT")
    ap.add_argument("--upstream-url", metavar="URL")
    args = ap.parse_args(argv)
    if not upstream and not args.upstream_url:
        upstream = [sys.executable, str(HERE / "echo_server.py")]
    return args, upstream


async def serve(proxy, args: argparse.Namespace) -> None:
    for _ in range(args.middleware):
        proxy.add_middleware(NoopMiddleware())
    if args.http:
        await proxy.run_http_async(show_banner=False, host="127.0.0.1", port=args.http, log_level="warning",
                                   json_response=True)
    else:
        await proxy.run_async(transport="stdio", show_banner=False)


async def amain(args: argparse.Namespace, upstream: list[str]) -> None:
    if args.upstream_url:
        from fastmcp.client.transports import StreamableHttpTransport

        transport = StreamableHttpTransport(args.upstream_url)
    else:
        transport = StdioTransport(command=upstream[0], args=upstream[1:], env=dict(os.environ))
    if args.reuse_session:
        from fastmcp import Client

        client = Client(transport)
        async with client:
            await serve(create_proxy(client, name="bench-fastmcp-proxy"), args)
    else:
        await serve(create_proxy(transport, name="bench-fastmcp-proxy"), args)


def main() -> None:
    args, upstream = parse()
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(amain, args, upstream)


if __name__ == "__main__":
    main()
