"""Faults the stdio proxy survives: upstreams that fail to start, crash or hang; a host that sends garbage.

Each failure is answered with one clear sentence for the failing upstream's tools while the other
upstreams keep working, the guard never hangs or dies, and its stdout carries only JSON-RPC.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from fixtures import (
    MODES,
    Mode,
    RecordFile,
    guard_command,
    guarded_session,
    pypi_server_command,
    recording_server_command,
    stdio_session,
    stdio_upstream,
    tools_env,
    write_guard_config,
)
from helpers_proxy import eventually, raw_guard, text
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e
T = TypeVar("T")


@pytest.mark.parametrize("mode", MODES)
async def test_upstream_that_fails_to_start_does_not_take_the_others_down(mode: Mode, tmp_path: Path) -> None:
    config = write_guard_config(
        tmp_path,
        {
            "bad": stdio_upstream([str(tmp_path / "no-such-server")]),
            "dead": stdio_upstream(recording_server_command("--fail-start")),
            "time": stdio_upstream(pypi_server_command("mcp-server-time")),
        },
    )
    log = tmp_path / "guard.log"
    async with guarded_session(config, mode=mode, stderr=log) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert names == {"time_get_current_time", "time_convert_time"}
        assert json.loads(text(await c.call_tool("time_get_current_time", {"timezone": "UTC"})))["timezone"] == "UTC"
        for name in ("bad_echo", "dead_echo"):
            result = await c.call_tool(name, {"text": "x"})
            assert result.is_error
            upstream = name.split("_")[0]
            assert text(result).startswith(f"mcp-guard could not call {upstream}/echo: upstream {upstream} "), text(result)
    stderr = log.read_text()
    assert "upstream bad could not start" in stderr and "No such file" in stderr
    assert "upstream dead exited with code 3" in stderr
    assert "refusing to start" in stderr  # the upstream's own stderr lands in the guard's log


@pytest.mark.parametrize("mode", MODES)
async def test_crash_gives_a_clear_error_then_the_upstream_is_restarted(
    mode: Mode, tmp_path: Path, record_file: RecordFile
) -> None:
    config = write_guard_config(
        tmp_path,
        {
            "rec": stdio_upstream(recording_server_command(), env=record_file.env()),
            "time": stdio_upstream(pypi_server_command("mcp-server-time")),
        },
    )
    log = tmp_path / "guard.log"
    async with guarded_session(config, mode=mode, stderr=log) as c:
        assert text(await c.call_tool("rec_echo", {"text": "before"})) == "before"
        crashed = await c.call_tool("rec_crash", {})
        assert crashed.is_error
        assert text(crashed) == "mcp-guard could not complete rec/crash: upstream rec exited with code 3"
        # the other upstream is unaffected while rec restarts
        assert not (await c.call_tool("time_get_current_time", {"timezone": "UTC"})).is_error

        async def echo() -> str:
            return text(await c.call_tool("rec_echo", {"text": "after"}))

        assert await eventually(echo, lambda out: out == "after") == "after"
    pids = {r["pid"] for r in record_file.records() if r.get("tool") == "echo"}
    assert len(pids) == 2, "the echo after the crash was served by a new process"
    assert "restarting in" in log.read_text()


@pytest.mark.parametrize("mode", MODES)
async def test_hang_times_out_without_hanging_the_guard(mode: Mode, tmp_path: Path, record_file: RecordFile) -> None:
    config = write_guard_config(
        tmp_path,
        {"rec": stdio_upstream(recording_server_command(), env=record_file.env(), timeout="2s")},
    )
    async with guarded_session(config, mode=mode, read_timeout_seconds=60.0) as c:
        started = time.monotonic()
        hung = await c.call_tool("rec_hang", {})
        elapsed = time.monotonic() - started
        assert hung.is_error
        assert text(hung) == "mcp-guard could not complete rec/hang: upstream rec did not answer tools/call within 2s"
        assert 1.5 < elapsed < 20
        # the same upstream still serves other calls
        assert text(await c.call_tool("rec_echo", {"text": "alive"})) == "alive"
    assert record_file.tools_called() == ["hang", "echo"]


async def test_malformed_host_input_is_answered_and_the_guard_keeps_serving(tmp_path: Path,
                                                                            record_file: RecordFile) -> None:
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record_file.env())})
    async with raw_guard(config, process=True) as guard:
        init = await guard.initialize()
        assert init["result"]["serverInfo"]["name"] == "mcp-guard"
        bad_lines: list[tuple[bytes, int]] = [
            (b"{not json", -32700),
            (b"\x00\xff\xfe", -32700),
            (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"', -32700),  # truncated
            (b"[1, 2, 3]", -32600),
            (b"42", -32600),
            (b"null", -32600),
            (b'{"jsonrpc": "2.0", "id": {"nested": 1}, "method": "ping"}', -32600),
            (b'{"jsonrpc": "2.0", "id": [1], "method": "ping"}', -32600),
            (b'{"jsonrpc": "2.0", "id": 7, "method": 5}', -32600),
        ]
        for line, code in bad_lines:
            await guard.send_line(line)
            answer = await guard.recv()
            assert answer.get("error", {}).get("code") == code, (line, answer)
        await guard.send_line(b"")  # blank lines are ignored
        bad_params = [
            ({"name": "rec_echo", "arguments": [1, 2]}, "Invalid params: `arguments` must be an object"),
            (None, "Invalid params: tools/call needs a `name`"),
            ({"name": 5}, "Unknown tool: 5"),
        ]
        for params, message in bad_params:
            answer = await guard.request("tools/call", params)
            assert answer["error"] == {"code": -32602, "message": message}
        assert (await guard.request("tools/list", {"cursor": "not-a-cursor"}))["error"]["code"] == -32602
        # still serving, and the garbage never reached the upstream
        echo = await guard.request("tools/call", {"name": "rec_echo", "arguments": {"text": "ok"}})
        assert echo["result"]["content"][0]["text"] == "ok"
        assert (await guard.request("ping"))["result"] == {}
    assert guard.proc.returncode == 0
    for line in guard.lines:  # stdout carried JSON-RPC messages and nothing else
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0" and ("result" in message or "error" in message or "method" in message)
    assert record_file.tools_called() == ["echo"]


@pytest.mark.parametrize("mode", MODES)
async def test_stdout_carries_only_json_rpc(mode: Mode, tmp_path: Path, record_file: RecordFile) -> None:
    """Tee the guard's stdout while an SDK client drives a chatty session: upstream stderr, an upstream
    that writes garbage and a stray answer on its stdout before speaking MCP, a crash."""
    noise = "echo 'not json from upstream'; echo '[1, 2]'; echo '{\"jsonrpc\": \"2.0\", \"id\": 999, \"result\": {}}'"
    noisy = stdio_upstream(["/bin/sh", "-c", noise + '; exec "$0" "$@"', *recording_server_command()])
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record_file.env()),
                                           "noisy": noisy})
    tee = tmp_path / "stdout.jsonl"
    wrapper = tmp_path / "tee-guard.sh"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(guard_command(config)) + f" | tee {tee}\n")
    wrapper.chmod(0o755)
    async with stdio_session([str(wrapper)], mode=mode, env=tools_env(), cwd=tmp_path) as c:
        await c.list_tools()
        await c.call_tool("rec_echo", {"text": "x"})
        await c.call_tool("rec_getenv", {"name": "PATH"})
        assert text(await c.call_tool("noisy_echo", {"text": "through the noise"})) == "through the noise"
        with pytest.raises(MCPError):
            await c.call_tool("nope", {})
        await c.call_tool("rec_crash", {})
    lines = tee.read_bytes().splitlines()
    assert len(lines) >= 5
    for line in lines:
        message = json.loads(line)
        assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", line



async def test_a_slow_upstream_does_not_hold_the_hosts_start(tmp_path: Path, record_file: RecordFile) -> None:
    """An upstream slower than its startup_timeout joins later (tools/list_changed) instead of
    holding `initialize` for a minute (hosts such as the MCP Inspector give up after 30 s)."""
    config = write_guard_config(
        tmp_path,
        {
            "time": stdio_upstream(pypi_server_command("mcp-server-time")),
            "slow": stdio_upstream(recording_server_command("--start-when", str(tmp_path / "go")), env=record_file.env(),
                                   startup_timeout="1s"),
        },
    )
    log = tmp_path / "guard.log"
    changed: list[str] = []

    async def on_message(message: object) -> None:
        changed.append(type(message).__name__ + ":" + str(getattr(getattr(message, "root", message), "method", "")))

    # the slow upstream cannot finish starting before the test creates "go": initialize returning at
    # all shows it did not wait for it (no clock to read on a loaded machine)
    async with guarded_session(config, stderr=log, message_handler=on_message) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert names == {"time_get_current_time", "time_convert_time"}
        early = await c.call_tool("slow_echo", {"text": "too soon"})
        assert early.is_error and "upstream slow has not started" in text(early), text(early)
        (tmp_path / "go").touch()  # the slow upstream now finishes starting
        later = await eventually(c.list_tools, lambda r: "slow_echo" in {t.name for t in r.tools}, within=40)
        assert "slow_echo" in {t.name for t in later.tools}
        assert text(await c.call_tool("slow_echo", {"text": "now"})) == "now"
    assert any("list_changed" in m for m in changed), changed
    assert "upstream slow is still starting after 1s (startup_timeout)" in log.read_text()


async def test_a_host_that_hangs_up_mid_call_leaves_no_traceback(tmp_path: Path, record_file: RecordFile) -> None:
    """The host closes both pipes while a call is in flight: the guard stops at once and quietly
    (it used to print `Task exception was never retrieved` with a ConnectionResetError)."""
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record_file.env())})
    errlog = tmp_path / "guard.stderr"
    async with raw_guard(config, stderr=errlog) as guard:
        await guard.initialize()
        await guard.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "rec_slow", "arguments": {"seconds": 2}}})
        await guard.send({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "rec_hang", "arguments": {}}})
        await eventually(lambda: _async(record_file.tools_called), lambda called: "hang" in called)
        proc = guard.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.feed_eof()
        proc._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]  # the host's end of our stdout
        started = time.monotonic()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert time.monotonic() - started < 8, "the guard waited to answer a host that is gone"
    stderr = errlog.read_text()
    assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr


async def _async(fn: Callable[[], T]) -> T:
    return fn()
