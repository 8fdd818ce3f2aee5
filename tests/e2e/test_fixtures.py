"""The project's own test fixtures work on their own (no guard in between), on both protocol eras.

If these fail, a failing guard test says nothing about the guard.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from fixtures import (
    ALLOW_ALL,
    MODES,
    PYTHON,
    Mode,
    RecordFile,
    conformance_server_command,
    recording_server_command,
    requires_tools,
    stdio_session,
    stdio_upstream,
    tool_path,
    tools_env,
    write_guard_config,
)
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from mcp_guard.config import load_config

pytestmark = pytest.mark.e2e


def _text(result: t.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, t.TextContent)
    return block.text


@pytest.mark.parametrize("mode", MODES)
async def test_recording_server_records_every_call(mode: Mode, record_file: RecordFile) -> None:
    async with stdio_session(recording_server_command(), mode=mode, env=tools_env(record_file.env())) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert {"echo", "write_note", "read_note", "delete_note", "slow", "crash", "hang", "add_tool"} <= names
        assert _text(await c.call_tool("echo", {"text": "hi"})) == "hi"
        assert not (await c.call_tool("write_note", {"path": "/notes/a", "text": "A"})).is_error
        assert _text(await c.call_tool("read_note", {"path": "/notes/a"})) == "A"
        assert not (await c.call_tool("delete_note", {"path": "/notes/a"})).is_error
        assert (await c.call_tool("read_note", {"path": "/notes/a"})).is_error
    assert record_file.calls() == [
        ("echo", {"text": "hi"}),
        ("write_note", {"path": "/notes/a", "text": "A"}),
        ("read_note", {"path": "/notes/a"}),
        ("delete_note", {"path": "/notes/a"}),
        ("read_note", {"path": "/notes/a"}),
    ]
    methods = record_file.methods()
    assert "tools/list" in methods
    assert ("initialize" in methods) == (mode == "legacy")
    if mode == "auto":
        assert methods[0] == "server/discover"


async def test_recording_server_paginates_dummy_tools() -> None:
    async with stdio_session(recording_server_command("--tools", "25", "--page-size", "10")) as c:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await c.list_tools(cursor=cursor)
            pages += 1
            seen += [tool.name for tool in page.tools]
            cursor = page.next_cursor
            if cursor is None:
                break
    assert pages == 4  # 12 base tools + 25 dummies = 37 tools, 10 per page
    assert len(seen) == len(set(seen)) == 37
    assert "dummy_0024" in seen


async def test_recording_server_announces_list_changed() -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, t.ToolListChangedNotification):
            changed.set()

    async with stdio_session(recording_server_command(), message_handler=on_message) as c:
        assert c.server_capabilities.tools is not None and c.server_capabilities.tools.list_changed
        await c.call_tool("add_tool", {"name": "late_tool"})
        with anyio.fail_after(5):
            await changed.wait()
        assert "late_tool" in {tool.name for tool in (await c.list_tools(cache_mode="bypass")).tools}
        assert _text(await c.call_tool("late_tool", {"text": "x"})) == "late_tool: x"


async def test_recording_server_progress_roots_env(record_file: RecordFile) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def on_roots(ctx: Any) -> t.ListRootsResult:
        return t.ListRootsResult(roots=[t.Root(uri=FileUrl("file:///srv/work"), name="work")])

    env = tools_env({**record_file.env(), "FIXTURE_SECRET": "s3"})
    async with stdio_session(recording_server_command(), env=env, list_roots_callback=on_roots) as c:
        await c.call_tool("slow", {"seconds": 0.2}, progress_callback=on_progress)
        assert json.loads(_text(await c.call_tool("list_roots", {}))) == ["file:///srv/work"]
        assert _text(await c.call_tool("getenv", {"name": "FIXTURE_SECRET"})) == "s3"
    assert seen == [1, 2, 3, 4]


async def test_recording_server_crash_and_hang(tmp_path: Path, record_file: RecordFile) -> None:
    stderr = tmp_path / "upstream.stderr"
    async with stdio_session(recording_server_command(), env=tools_env(record_file.env()), stderr=stderr) as c:
        with pytest.raises(MCPError):
            await c.call_tool("hang", {}, read_timeout_seconds=1.0)  # times out client-side
        with pytest.raises(MCPError):
            await c.call_tool("crash", {})
    assert record_file.tools_called() == ["hang", "crash"]
    log = stderr.read_text()
    assert "started" in log and "crash() called" in log


def test_recording_server_fail_start() -> None:
    proc = subprocess.run([*recording_server_command("--fail-start")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert "refusing to start" in proc.stderr


@pytest.mark.parametrize("mode", MODES)
async def test_conformance_fixture_over_stdio(mode: Mode) -> None:
    async with stdio_session(conformance_server_command(), mode=mode) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert {"test_simple_text", "test_sampling", "test_elicitation"} <= names
        assert _text(await c.call_tool("test_simple_text", {})) == "This is a simple text response for testing."
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert "test_prompt_with_arguments" in prompts


async def test_conformance_fixture_over_http(conformance_http_url: str) -> None:
    async def on_sampling(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
        return t.CreateMessageResult(role="assistant", model="m", content=t.TextContent(type="text", text="42"))

    async with Client(conformance_http_url, mode="legacy", sampling_callback=on_sampling) as c:
        result = await c.call_tool("test_sampling", {"prompt": "6x7?"})
        assert _text(result) == "LLM response: 42"
        resource = (await c.read_resource("test://static-text")).contents[0]
        assert isinstance(resource, t.TextResourceContents)
        assert resource.text == "This is the content of the static text resource."


def test_write_guard_config_is_valid(tmp_path: Path, record_file: RecordFile) -> None:
    path = write_guard_config(
        tmp_path,
        {"rec": stdio_upstream(recording_server_command(), env=record_file.env()),
         "conf": stdio_upstream(conformance_server_command(), prefix=False)},
        ALLOW_ALL,
        identity={"user": "alice@example.com", "agent": "tester"},
    )
    config = load_config(path)
    assert set(config.upstreams) == {"rec", "conf"}
    assert config.upstreams["rec"].command == PYTHON
    assert config.upstreams["rec"].env == record_file.env()
    assert config.upstreams["conf"].prefix is False
    assert config.policies == ((tmp_path / "policies").resolve(),)
    assert config.state_url == "memory://"


@requires_tools("mcp-inspector")
def test_inspector_cli_drives_the_recording_server(record_file: RecordFile) -> None:
    """The pinned npm tools run on Node 22 (the Inspector CLI needs >= 22.19)."""
    proc = subprocess.run(
        [str(tool_path("mcp-inspector")), "--cli", "-q", "--format", "json", "-e", f"RECORD_FILE={record_file.path}",
         *recording_server_command(), "--method", "tools/call", "--tool-name", "echo", "--tool-args-json", '{"text": "yo"}'],
        capture_output=True, text=True, timeout=90, env=tools_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"]["content"][0]["text"] == "yo"
    assert record_file.calls() == [("echo", {"text": "yo"})]


@requires_tools("conformance")
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_baseline_taken_live_reproduces_its_checked_in_result(tmp_path: Path) -> None:
    """The live run a baseline falls back to when made with other versions works, and gives what is
    checked in (the cheapest one: one auth scenario with the SDK's own client)."""
    from fixtures.baselines import BASELINES

    baseline = BASELINES["auth-sdk-resource-mismatch"]
    assert baseline.run(tmp_path) == json.loads(baseline.path().read_text(encoding="utf-8"))["result"]
