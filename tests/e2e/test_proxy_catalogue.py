"""Discovery through the stdio proxy: pagination on both sides and list changes re-filtered.

The recording upstream advertises 2512 tools in pages of 300 (so the guard must follow upstream
cursors); policy hides a thousand of them; the guard serves the rest to the host in pages of 1000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from fixtures import (
    MODES,
    Mode,
    RecordFile,
    guarded_session,
    recording_server_command,
    stdio_upstream,
    write_guard_config,
)
from helpers_proxy import eventually, text
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", MODES)
async def test_pagination_toward_upstream_and_host(mode: Mode, tmp_path: Path, record_file: RecordFile) -> None:
    config = write_guard_config(
        tmp_path,
        {"rec": stdio_upstream(recording_server_command("--tools", "2500", "--page-size", "300"), env=record_file.env())},
        [{"id": "big", "rules": [
            {"effect": "allow", "tools": ["rec/*"]},
            {"effect": "deny", "tools": ["rec/dummy_1*"]},  # dummy_1000..dummy_1999: hidden
        ]}],
    )
    async with guarded_session(config, mode=mode) as c:
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            page = await c.list_tools(cursor=cursor)
            pages.append([tool.name for tool in page.tools])
            cursor = page.next_cursor
            if cursor is None:
                break
        names = [n for p in pages for n in p]
        assert [len(p) for p in pages] == [1000, 512]
        assert len(set(names)) == len(names) == 12 + 1500
        assert "rec_dummy_0999" in names and "rec_dummy_2499" in names and "rec_echo" in names
        assert not any(n.startswith("rec_dummy_1") for n in names)
        assert text(await c.call_tool("rec_dummy_2499", {"path": "/x"})) == "ok"
        with pytest.raises(MCPError) as caught:
            await c.call_tool("rec_dummy_1500", {"path": "/x"})
        assert caught.value.message == "Unknown tool: rec_dummy_1500"
    # the upstream was asked for every one of its pages (ceil(2512 / 300) = 9)
    assert record_file.methods().count("tools/list") >= 9
    assert record_file.tools_called() == ["dummy_2499"]


@pytest.mark.parametrize("mode", MODES)
async def test_list_changed_is_refiltered_and_passed_on(mode: Mode, tmp_path: Path, record_file: RecordFile) -> None:
    config = write_guard_config(
        tmp_path,
        {"rec": stdio_upstream(recording_server_command(), env=record_file.env())},
        [{"id": "late", "rules": [
            {"effect": "allow", "tools": ["rec/echo", "rec/add_tool", "rec/remove_tool", "rec/late_*"]},
        ]}],
    )
    changed: list[Any] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, t.ToolListChangedNotification):
            changed.append(message)
            arrived.set()

    async with guarded_session(config, mode=mode, message_handler=on_message) as c:
        before = {tool.name for tool in (await c.list_tools()).tools}
        assert before == {"rec_echo", "rec_add_tool", "rec_remove_tool"}
        # a tool policy hides appears upstream: the host's view does not change, so nothing is said
        await c.call_tool("rec_add_tool", {"name": "secret_tool"})
        # a tool policy shows appears: the host is told (handshake era) and sees it
        await c.call_tool("rec_add_tool", {"name": "late_tool"})
        if mode == "legacy":
            with anyio.fail_after(10):
                await arrived.wait()

        async def names() -> set[str]:
            return {tool.name for tool in (await c.list_tools(cache_mode="bypass")).tools}

        # (the modern face has no push, so a host there sees the change on its next list)
        after = await eventually(names, lambda now: "rec_late_tool" in now)
        assert after == before | {"rec_late_tool"}
        assert text(await c.call_tool("rec_late_tool", {"text": "new"})) == "late_tool: new"
        with pytest.raises(MCPError) as caught:
            await c.call_tool("rec_secret_tool", {"text": "x"})
        assert caught.value.message == "Unknown tool: rec_secret_tool"
        if mode == "legacy":
            assert len(changed) == 1, "the hidden addition must not have produced a notification"
        # removal is passed on too
        arrived = anyio.Event()
        await c.call_tool("rec_remove_tool", {"name": "late_tool"})
        if mode == "legacy":
            with anyio.fail_after(10):
                await arrived.wait()
        assert "rec_late_tool" not in await eventually(names, lambda now: "rec_late_tool" not in now)
    assert "secret_tool" not in record_file.tools_called()
