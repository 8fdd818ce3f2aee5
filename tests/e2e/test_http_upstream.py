"""A Streamable HTTP upstream (the conformance fixture over the SDK's own HTTP server) behind the
guard, next to a stdio upstream, with its own credential header and policies applied to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import RecordFile, guarded_session, recording_server_command, stdio_upstream, write_guard_config
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e


async def test_http_upstream_filtered_and_forwarded(tmp_path: Path, conformance_http_url: str) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    policies = [
        {"id": "fx", "rules": [{"effect": "allow", "tools": ["fx/test_simple_text", "fx/test_image_content"]},
                               {"effect": "allow", "resources": ["fx/*"]}]},
        {"id": "rec", "rules": [{"effect": "allow", "tools": ["rec/echo"]}]},
    ]
    config = write_guard_config(
        tmp_path,
        {
            "fx": {"url": conformance_http_url, "headers": {"Authorization": "Bearer upstream-own-token"}},
            "rec": stdio_upstream(recording_server_command(), env=record.env()),
        },
        policies,
    )
    for mode in ("legacy", "auto"):
        async with guarded_session(config, mode=mode) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["fx_test_image_content", "fx_test_simple_text", "rec_echo"]
            text = await client.call_tool("fx_test_simple_text", {})
            assert not text.is_error
            assert text.content[0].text == "This is a simple text response for testing."  # type: ignore[union-attr]
            image = await client.call_tool("fx_test_image_content", {})
            assert image.content[0].type == "image"
            with pytest.raises(MCPError) as hidden:
                await client.call_tool("fx_test_error_handling", {})
            assert hidden.value.error.message == "Unknown tool: fx_test_error_handling"
            resources = await client.list_resources()
            assert any(str(r.uri) == "test://static-text" for r in resources.resources)
            read = await client.read_resource("test://static-text")
            assert read.contents
            assert not (await client.call_tool("rec_echo", {"text": "x"})).is_error


@pytest.mark.parametrize("protocol", ["modern", "auto"])
async def test_http_upstream_on_2026_07_28(tmp_path: Path, conformance_http_url: str, protocol: str) -> None:
    """The SDK's own Streamable HTTP server spoken to in the 2026-07-28 era: ``server/discover``, per-request
    ``_meta`` and the routing headers it validates (``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name``)."""
    config = write_guard_config(
        tmp_path,
        {"fx": {"url": conformance_http_url, "protocol": protocol}},
        [{"id": "fx", "rules": [{"effect": "allow", "tools": ["fx/test_simple_text", "fx/test_tool_with_progress"]},
                                {"effect": "allow", "resources": ["fx/*"]}]}],
    )
    async with guarded_session(config, mode="2026-07-28") as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == ["fx_test_simple_text", "fx_test_tool_with_progress"]
        text = await client.call_tool("fx_test_simple_text", {})
        assert text.content[0].text == "This is a simple text response for testing."  # type: ignore[union-attr]
        progress = await client.call_tool("fx_test_tool_with_progress", {})
        assert not progress.is_error
        read = await client.read_resource("test://static-text")
        assert read.contents
