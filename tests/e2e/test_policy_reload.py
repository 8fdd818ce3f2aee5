"""Hot reload through a real guard: a changed policy file takes effect without a restart, the host is
told the list changed, and a broken edit keeps the last good policies (and says why in the log)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import mcp_types as types
import pytest
from fixtures import (
    RecordFile,
    guarded_session,
    recording_server_command,
    stdio_upstream,
    write_guard_config,
    write_policies,
)

pytestmark = pytest.mark.e2e

ECHO_ONLY = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo"]}]}]
ECHO_AND_READ = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo", "rec/read_note"]}]}]


async def _until(predicate: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


async def test_reload_swaps_policies_and_keeps_last_good_on_error(tmp_path: Path) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record.env())}, ECHO_ONLY)
    changed = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    log = tmp_path / "guard.log"
    async with guarded_session(config, stderr=log, message_handler=on_message) as client:

        async def names() -> list[str]:
            return sorted(t.name for t in (await client.list_tools()).tools)

        assert await names() == ["rec_echo"]
        write_policies(tmp_path / "policies", ECHO_AND_READ)

        async def widened() -> bool:
            return await names() == ["rec_echo", "rec_read_note"]

        await _until(widened)
        await asyncio.wait_for(changed.wait(), 10)
        await client.call_tool("rec_read_note", {"path": "x"})
        assert record.tools_called() == ["read_note"]  # allowed now, so it reached the upstream

        # a broken edit: the last good set stays in force and the log says why, file:line:col
        (tmp_path / "policies" / "test.yaml").write_text("version: 1\npolicies:\n  - id: p\n    rules:\n      - effect: alow\n        tools: [rec/echo]\n")

        async def logged() -> bool:
            return "alow" in log.read_text()

        await _until(logged)
        assert await names() == ["rec_echo", "rec_read_note"]
        assert "test.yaml:5:" in log.read_text()
