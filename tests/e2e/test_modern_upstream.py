"""The upstream face on 2026-07-28: ``protocol: modern | auto`` upstreams are spoken to with
``server/discover`` and per-request ``_meta`` (no ``initialize``), behind hosts of both eras."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import (
    MODES,
    VENV_BIN,
    Mode,
    RecordFile,
    guarded_session,
    recording_server_command,
    stdio_upstream,
    write_guard_config,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", MODES)
async def test_modern_upstreams_behind_both_host_eras(tmp_path: Path, mode: Mode) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    config = write_guard_config(
        tmp_path,
        {
            "time": {"command": str(VENV_BIN / "mcp-server-time"), "protocol": "modern"},
            "rec": stdio_upstream(recording_server_command(), env=record.env(), protocol="auto"),
        },
        [{"id": "p", "rules": [{"effect": "allow", "tools": ["time/get_current_time", "rec/echo"]}]}],
    )
    async with guarded_session(config, mode=mode) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == ["rec_echo", "time_get_current_time"]
        now = await client.call_tool("time_get_current_time", {"timezone": "UTC"})
        assert not now.is_error and "UTC" in now.content[0].text  # type: ignore[union-attr]
        echo = await client.call_tool("rec_echo", {"text": "hi"})
        assert not echo.is_error
    methods = record.methods()
    assert methods[0] == "server/discover" and "initialize" not in methods
    received = [r for r in record.records() if r["method"] == "tools/call"]
    assert [r["arguments"] for r in received] == [{"text": "hi"}]
