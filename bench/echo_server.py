"""Minimal upstream MCP server over stdio (mcp==2.3.0 low-level Server API).

Tools: ``echo(text)`` plus N generated dummy tools (``dummy_0000`` ...), so the
tools/list payload can be scaled.  N comes from ``--tools N`` or the env var
ECHO_TOOLS (default 20).

Env knobs:
  ECHO_TOOLS=N        number of dummy tools (argv ``--tools N`` wins)
  ECHO_NO_OTEL=1      drop the SDK's default OpenTelemetryMiddleware
  ECHO_OTEL_MEMORY=1  install an OTel SDK TracerProvider with an in-memory
                      exporter (needs opentelemetry-sdk) to price real spans

Usage:  python echo_server.py [--tools N] [--http PORT [--sse]]

``--http PORT`` serves the same server over Streamable HTTP at
http://127.0.0.1:PORT/mcp (the SDK's ``streamable_http_app`` under uvicorn,
stateful: handshake-era sessions and 2026-07-28 stateless POSTs alike), with
plain JSON answers unless ``--sse``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server


def _maybe_install_otel() -> None:
    if os.environ.get("ECHO_OTEL_MEMORY") != "1":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)


def build_tools(n: int) -> list[types.Tool]:
    tools = [
        types.Tool(
            name="echo",
            description="Echo the given text back.",
            input_schema={
                "type": "object",
                "properties": {"text": {"type": "string", "description": "Text to echo."}},
                "required": ["text"],
            },
        )
    ]
    for i in range(n):
        tools.append(
            types.Tool(
                name=f"dummy_{i:04d}",
                description=f"Dummy tool number {i}; does nothing useful, exists to grow tools/list.",
                input_schema={
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "A file path."},
                        "limit": {"type": "integer", "description": "Max items.", "minimum": 1},
                        "verbose": {"type": "boolean", "description": "Verbose output."},
                    },
                    "required": ["path"],
                },
            )
        )
    return tools


def make_server(n_tools: int) -> Server:
    listing = types.ListToolsResult(tools=build_tools(n_tools))

    async def on_list_tools(ctx, params):
        return listing

    async def on_call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        if params.name == "echo":
            text = str(args.get("text", ""))
        elif params.name.startswith("dummy_"):
            text = "ok"
        else:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"unknown tool {params.name}")], is_error=True
            )
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server = Server("bench-echo", version="0.1.0", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    if os.environ.get("ECHO_NO_OTEL") == "1":
        server.middleware = []
    return server


async def _main(n_tools: int) -> None:
    server = make_server(n_tools)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve_http(n_tools: int, port: int, sse: bool) -> None:
    import uvicorn

    app = make_server(n_tools).streamable_http_app(json_response=not sse)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tools", type=int, default=int(os.environ.get("ECHO_TOOLS", "20")))
    ap.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT/mcp")
    ap.add_argument("--sse", action="store_true", help="with --http: answer POSTs with SSE streams")
    args = ap.parse_args()
    _maybe_install_otel()
    if args.http:
        with contextlib.suppress(KeyboardInterrupt):
            serve_http(args.tools, args.http, args.sse)
        sys.exit(0)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_main, args.tools)
    sys.exit(0)


if __name__ == "__main__":
    main()
