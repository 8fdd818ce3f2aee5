"""2026-07-28 headers toward an HTTP upstream: ``Mcp-Param-*`` mirrored from ``x-mcp-header`` arguments, and
tools whose annotation is invalid left out of the listing (a client must never call them)."""

from __future__ import annotations

from typing import Any

from mcp_guard.config import UpstreamConfig
from mcp_guard.jsonrpc import META_PROTOCOL_VERSION, MODERN, result
from mcp_guard.upstreams.http import HttpChannel


def channel() -> HttpChannel:
    return HttpChannel(UpstreamConfig(name="up", url="http://127.0.0.1:9/mcp"))


def tool(name: str, **properties: Any) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object", "properties": properties}}


def listed(ch: HttpChannel, *tools: dict[str, Any]) -> list[str]:
    ch._deliver_answer(result(1, {"tools": list(tools)}), 1, "tools/list")
    return [t["name"] for t in ch._inbox.get_nowait()["result"]["tools"]]


def call_headers(ch: HttpChannel, name: str, arguments: dict[str, Any]) -> dict[str, str]:
    message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": name, "arguments": arguments, "_meta": {META_PROTOCOL_VERSION: MODERN}}}
    return ch._headers(message, "tools/call", modern=True)


def test_tools_with_an_invalid_x_mcp_header_are_left_out_and_remembered() -> None:
    ch = channel()
    names = listed(ch, tool("ok", region={"type": "string", "x-mcp-header": "Region"}),
                   tool("empty", a={"type": "string", "x-mcp-header": ""}),
                   tool("object", a={"type": "object", "x-mcp-header": "A"}),
                   tool("colon", a={"type": "string", "x-mcp-header": "A:B"}),
                   tool("twice", a={"type": "string", "x-mcp-header": "A"}, b={"type": "string", "x-mcp-header": "a"}))
    assert names == ["ok"]
    assert set(ch.excluded) == {"empty", "object", "colon", "twice"}


def test_arguments_are_mirrored_and_unsafe_values_never_break_the_header_block() -> None:
    ch = channel()
    listed(ch, tool("t", region={"type": "string", "x-mcp-header": "Region"}, n={"type": "integer", "x-mcp-header": "N"},
                    evil={"type": "string", "x-mcp-header": "Evil"}, plain={"type": "string"}))
    headers = call_headers(ch, "t", {"region": "eu", "n": 3, "evil": "x\r\nMcp-Name: other", "plain": "p"})
    assert headers["Mcp-Param-Region"] == "eu"
    assert headers["Mcp-Param-N"] == "3"
    assert headers["Mcp-Param-Evil"].startswith("=?base64?")  # a line break is never sent raw
    assert headers["Mcp-Name"] == "t"
    assert not any(k.lower() == "mcp-param-plain" for k in headers)


def test_a_tool_never_listed_or_relisted_without_its_annotation_mirrors_nothing() -> None:
    ch = channel()
    assert not any(k.startswith("Mcp-Param-") for k in call_headers(ch, "unknown", {"region": "eu"}))
    listed(ch, tool("t", region={"type": "string", "x-mcp-header": ""}))
    assert not any(k.startswith("Mcp-Param-") for k in call_headers(ch, "t", {"region": "eu"}))
