"""GuardSession on the wire, in-process: exact bytes, cursors, malformed input, collisions.

The host is in memory (``proxy_harness.FakeHost``); upstreams are real recording servers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fixtures import RecordFile, recording_server_command, stdio_upstream
from proxy_harness import guard_session

from mcp_guard.jsonrpc import dumps
from mcp_guard.proxy.routing import PAGE_SIZE

POLICY = [{"id": "p", "rules": [
    {"effect": "allow", "tools": ["rec/*"]},
    {"effect": "deny", "tools": ["rec/crash", "rec/hang", "rec/dummy_1*"]},
    {"effect": "allow", "tools": ["rec/write_note"], "when": {"args.path": {"under": "/notes"}}},
]}]


def _rec(record_file: RecordFile, *args: str, **options: Any) -> dict[str, Any]:
    return stdio_upstream(recording_server_command(*args), env=record_file.env(), **options)


def _call(name: Any, arguments: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return params


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_hidden_and_unknown_answers_are_byte_identical(era: str, tmp_path: Path, record_file: RecordFile) -> None:
    async with guard_session(tmp_path, {"rec": _rec(record_file)}, POLICY) as host:
        await (host.initialize() if era == "legacy" else host.discover())
        variants: list[tuple[Any, Any]] = [
            ("r-1", {"text": "x"}), (7, None), (8, {}), (9, [1, 2]), (10, "not an object"),
            (11, {"path": "/notes/a", "text": "allowed for a visible sibling"}),
        ]
        for rid, args in variants:
            hidden = await host.request("tools/call", _call("rec_crash", args), rid=rid)
            unknown = await host.request("tools/call", _call("rec_zzzzz", args), rid=rid)
            assert dumps(hidden).replace(b"rec_crash", b"NAME") == dumps(unknown).replace(b"rec_zzzzz", b"NAME")
            assert hidden["error"] == {"code": -32602, "message": "Unknown tool: rec_crash"}
        # a tool hidden by an unconditional deny among thousands behaves the same
        hidden = await host.request("tools/call", _call("rec_dummy_1234", {"path": "/x"}), rid=1)
        assert hidden == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Unknown tool: rec_dummy_1234"}}
        assert host.pending() == []
    assert record_file.tools_called() == []


async def test_pagination_cursors(tmp_path: Path, record_file: RecordFile) -> None:
    async with guard_session(tmp_path, {"rec": _rec(record_file, "--tools", "2100", "--page-size", "700")},
                             [{"id": "all", "rules": [{"effect": "allow", "tools": ["rec/*"]}]}]) as host:
        await host.initialize()
        names: list[str] = []
        sizes: list[int] = []
        cursors: list[str] = []
        params: dict[str, Any] | None = None
        while True:
            page = (await host.request("tools/list", params))["result"]
            names += [t["name"] for t in page["tools"]]
            sizes.append(len(page["tools"]))
            if "nextCursor" not in page:
                break
            cursors.append(page["nextCursor"])
            params = {"cursor": page["nextCursor"]}
        assert sizes == [PAGE_SIZE, PAGE_SIZE, 2112 - 2 * PAGE_SIZE]
        assert len(set(names)) == 2112
        # a cursor can be replayed (stateless), and an explicit null cursor is the first page
        again = (await host.request("tools/list", {"cursor": cursors[0]}))["result"]
        assert again["tools"][0]["name"] == names[PAGE_SIZE]
        first = (await host.request("tools/list", {"cursor": None}))["result"]
        assert first["tools"][0]["name"] == names[0]
        for bad in ("", "garbage", "bWNwLWd1YXJkOi0x", 5, {"offset": 1}, "mcp-guard:10"):
            answer = await host.request("tools/list", {"cursor": bad})
            assert answer["error"] == {"code": -32602, "message": "Invalid params: unknown cursor"}, bad
    # the upstream's own pages were all fetched: ceil(2112 / 700) = 4 tools/list requests
    assert record_file.methods().count("tools/list") == 4


async def test_modern_era_results(tmp_path: Path, record_file: RecordFile) -> None:
    async with guard_session(tmp_path, {"rec": _rec(record_file)}, POLICY) as host:
        found = (await host.discover())["result"]
        assert "2026-07-28" in found["supportedVersions"]
        assert found["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcp-guard"
        listed = (await host.request("tools/list"))["result"]
        assert listed["resultType"] == "complete" and listed["cacheScope"] == "private"
        called = (await host.request("tools/call", _call("rec_echo", {"text": "m"})))["result"]
        assert called["resultType"] == "complete" and called["content"][0]["text"] == "m"
    # the host's era keys describe the host, not the guard: they never reach the upstream
    assert record_file.calls() == [("echo", {"text": "m"})]


async def test_malformed_messages_are_answered_and_never_kill_the_session(tmp_path: Path,
                                                                          record_file: RecordFile) -> None:
    async with guard_session(tmp_path, {"rec": _rec(record_file)}, POLICY) as host:
        await host.initialize()
        cases: list[tuple[Any, int | None]] = [
            ([1, 2], -32600), (None, -32600), ("text", -32600), (3, -32600),
            ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, -32600),
            ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, -32600),
            ({"jsonrpc": "2.0", "id": True, "method": "ping"}, -32600),
            ({"jsonrpc": "2.0", "id": 5, "method": 7}, -32600),
            ({"jsonrpc": "2.0", "id": 6}, -32600),  # neither request nor response
            ({"jsonrpc": "2.0", "method": "notifications/nobody-knows"}, None),
            ({"jsonrpc": "2.0", "id": 99999, "result": {}}, None),  # answer to nothing the guard asked
            ({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"x": 1}}}, None),
            ({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": "nonsense"}, None),
        ]
        for message, code in cases:
            await host.handle(message)
            if code is None:
                await asyncio.sleep(0.05)
                assert host.pending() == [], message
            else:
                answer = await host.next()
                assert answer["error"]["code"] == code, (message, answer)
        bad_calls: list[tuple[Any, str]] = [
            (None, "Invalid params: tools/call needs a `name`"),
            ([1], "Invalid params: tools/call needs a `name`"),
            (_call("rec_echo", [1]), "Invalid params: `arguments` must be an object"),
            (_call(None), "Unknown tool: None"),
        ]
        for params, text in bad_calls:
            call: dict[str, Any] = {"jsonrpc": "2.0", "id": "bad", "method": "tools/call"}
            if params is not None:
                call["params"] = params
            await host.handle(call)
            answer = await host.next()
            assert answer["error"] == {"code": -32602, "message": text}, params
        ok = await host.request("tools/call", _call("rec_echo", {"text": "alive"}))
        assert ok["result"]["content"][0]["text"] == "alive"
    assert record_file.tools_called() == ["echo"]


async def test_cancellation_reaches_the_upstream_and_nothing_is_answered(tmp_path: Path,
                                                                        record_file: RecordFile) -> None:
    async with guard_session(tmp_path, {"rec": _rec(record_file)}, POLICY) as host:
        await host.initialize()
        await host.handle({"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call",
                           "params": _call("rec_slow", {"seconds": 5})})
        for _ in range(100):  # wait until the upstream has the request
            if "slow" in record_file.tools_called():
                break
            await asyncio.sleep(0.05)
        await host.handle({"jsonrpc": "2.0", "method": "notifications/cancelled",
                           "params": {"requestId": "slow-1", "reason": "user gave up"}})
        ok = await host.request("tools/call", _call("rec_echo", {"text": "next"}))
        assert ok["result"]["content"][0]["text"] == "next"
        await asyncio.sleep(0.2)
        assert [m for m in host.pending() if m.get("id") == "slow-1"] == []
    assert "notifications/cancelled" in record_file.methods()


async def test_collision_refuses_to_start_naming_both_tools(tmp_path: Path, record_file: RecordFile) -> None:
    async with guard_session(tmp_path, {"a": _rec(record_file, prefix=False), "b": _rec(record_file, prefix=False)}) as host:
        answer = await host.initialize()
        message = answer["error"]["message"]
        assert answer["error"]["code"] == -32603
        assert "tool name collision: a/echo and b/echo would both be exposed as `echo`" in message


async def test_unsafe_tool_names_are_not_exposed(tmp_path: Path, record_file: RecordFile) -> None:
    async with guard_session(tmp_path, {"rec": _rec(record_file)},
                             [{"id": "all", "rules": [{"effect": "allow", "tools": ["rec/*"]}]}]) as host:
        await host.initialize()
        await host.request("tools/call", _call("rec_add_tool", {"name": "has space"}))
        await host.request("tools/call", _call("rec_add_tool", {"name": "fine_name"}))
        for _ in range(100):
            names = {t["name"] for t in (await host.request("tools/list"))["result"]["tools"]}
            if "rec_fine_name" in names:
                break
            await asyncio.sleep(0.05)
        assert "rec_fine_name" in names and "rec_has space" not in names
        answer = await host.request("tools/call", _call("rec_has space", {}))
        assert answer["error"] == {"code": -32602, "message": "Unknown tool: rec_has space"}




async def test_a_call_to_a_down_upstream_spends_no_budget(tmp_path: Path, record_file: RecordFile) -> None:
    limited = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo"]}],
                "limits": [{"tools": ["rec/*"], "per_session": 1}]}]
    async with guard_session(tmp_path, {"rec": _rec(record_file)}, limited) as host:
        await host.initialize()
        upstream = host.session.upstreams["rec"]
        upstream.status, upstream.last_error = "down", "upstream rec exited with code 3"  # as after a crash
        down = await host.request("tools/call", _call("rec_echo", {"text": "while down"}))
        assert down["result"]["isError"] and "upstream rec exited with code 3" in down["result"]["content"][0]["text"]
        upstream.status = "ready"  # back: the one call of the session's budget is still there
        up = await host.request("tools/call", _call("rec_echo", {"text": "after"}))
        assert up["result"]["isError"] is False
        spent = await host.request("tools/call", _call("rec_echo", {"text": "again"}))
        assert "budget is used up" in spent["result"]["content"][0]["text"]
    assert [args for _, args in record_file.calls()] == [{"text": "after"}]
