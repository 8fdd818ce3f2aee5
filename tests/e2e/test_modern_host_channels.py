"""The channels toward a 2026-07-28 host, driven as raw JSON lines through ``mcp-guard run``.

A 2026-07-28 host has no session: every request carries its own ``_meta``.  Progress flows with
the token of the request the host is waiting on now (also after an ``input_required`` round trip),
upstream log messages reach only a request that opted in with ``io.modelcontextprotocol/logLevel``,
and list changes reach it only on its ``subscriptions/listen`` request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fixtures import recording_server_command, stdio_upstream, write_guard_config, write_policies
from helpers_proxy import RawGuard, eventually, raw_guard

pytestmark = pytest.mark.e2e

MODERN = "2026-07-28"
ROOTS = {"roots": {}}


def meta(capabilities: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A 2026-07-28 request's ``_meta`` (``extra`` adds e.g. ``progressToken``)."""
    return {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "raw-modern-host", "version": "1.0"},
            "io.modelcontextprotocol/clientCapabilities": capabilities or {}, **extra}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command("--chatty"), roots=["/srv/one"])})


async def discover(guard: RawGuard) -> None:
    found = await guard.request("server/discover", {"_meta": meta()})
    assert "result" in found, found


def progress_of(messages: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [(m["params"]["progressToken"], m["params"]["progress"]) for m in messages
            if m.get("method") == "notifications/progress"]


async def test_progress_follows_the_retried_request_after_input_required(tmp_path: Path) -> None:
    """The upstream keeps its first token; the host's retry carries a new one: progress is rewritten
    to the token of the request the host is waiting on."""
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command("--chatty"), roots="pass")})
    async with raw_guard(config) as guard:
        await discover(guard)
        first = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": True},
                                                   "_meta": meta(ROOTS, progressToken="first")})
        assert "result" in first, first
        asked = first["result"]
        assert asked["resultType"] == "input_required", first
        assert [r["method"] for r in asked["inputRequests"].values()] == ["roots/list"]
        before = progress_of(guard.others)
        guard.others.clear()
        answers = {key: {"roots": [{"uri": "file:///srv/host-root"}]} for key in asked["inputRequests"]}
        done = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": True},
                                                  "inputResponses": answers, "requestState": asked["requestState"],
                                                  "_meta": meta(ROOTS, progressToken="second")})
        assert "chatty done" in done["result"]["content"][0]["text"] and "host-root" in done["result"]["content"][0]["text"]
        after = progress_of(guard.others)
    assert before == [("first", 1), ("first", 2)]
    assert after == [("second", 3), ("second", 4)]


async def test_a_retry_without_a_progress_token_gets_no_progress(tmp_path: Path) -> None:
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command("--chatty"), roots="pass")})
    async with raw_guard(config) as guard:
        await discover(guard)
        first = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {},
                                                   "_meta": meta(ROOTS, progressToken=7)})
        asked = first["result"]
        guard.others.clear()
        answers = {key: {"roots": []} for key in asked["inputRequests"]}
        done = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {}, "inputResponses": answers,
                                                  "requestState": asked["requestState"], "_meta": meta(ROOTS)})
        assert "chatty done" in done["result"]["content"][0]["text"]
        assert progress_of(guard.others) == []  # not sent with the stale token of the finished request


def logs_of(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["params"]["level"], m["params"]["data"]) for m in messages if m.get("method") == "notifications/message"]


async def test_upstream_logs_reach_only_a_request_that_opted_in(config: Path) -> None:
    async with raw_guard(config) as guard:
        await discover(guard)
        silent = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": False}, "_meta": meta()})
        assert "chatty done" in silent["result"]["content"][0]["text"]
        assert logs_of(guard.others) == []  # no opt-in: nothing
        guard.others.clear()
        loud = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": False},
                                                  "_meta": meta(**{"io.modelcontextprotocol/logLevel": "warning"})})
        assert "chatty done" in loud["result"]["content"][0]["text"]
        # at or above the asked level, sent before the response
        assert logs_of(guard.others) == [("warning", "chatty warning before"), ("error", "chatty error before"),
                                         ("error", "chatty error after")]
        guard.others.clear()
        odd = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": False},
                                                 "_meta": meta(**{"io.modelcontextprotocol/logLevel": "loud"})})
        assert "chatty done" in odd["result"]["content"][0]["text"]
        assert logs_of(guard.others) == []  # not a level: no opt-in
        guard.others.clear()
        listed = await guard.request("tools/list", {"_meta": meta(**{"io.modelcontextprotocol/logLevel": "debug"})})
        assert "result" in listed
        assert logs_of(guard.others) == []


SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


async def listen(guard: RawGuard, rid: Any, notifications: dict[str, Any]) -> dict[str, Any]:
    """Open a ``subscriptions/listen`` request; returns its acknowledgement (the first message on it)."""
    await guard.send({"jsonrpc": "2.0", "id": rid, "method": "subscriptions/listen",
                      "params": {"notifications": notifications, "_meta": meta()}})
    ack = await guard.recv()
    assert ack.get("method") == "notifications/subscriptions/acknowledged", ack
    return ack


async def next_notification(guard: RawGuard, method: str, within: float = 20.0) -> dict[str, Any]:
    while True:
        message = await guard.recv(within)
        assert message.get("id") is None or "method" in message, f"unexpected answer {message}"
        if message.get("method") == method:
            return message


async def test_listen_delivers_an_upstream_tool_list_change(config: Path) -> None:
    async with raw_guard(config) as guard:
        await discover(guard)
        ack = await listen(guard, "sub-1", {"toolsListChanged": True, "resourceSubscriptions": ["file:///x"]})
        # the honoured subset: list changes, not resource subscriptions
        assert ack["params"] == {"_meta": {SUBSCRIPTION_ID: "sub-1"}, "notifications": {"toolsListChanged": True}}
        added = await guard.request("tools/call", {"name": "rec_add_tool", "arguments": {"name": "fresh"}, "_meta": meta()})
        assert "added fresh" in added["result"]["content"][0]["text"]
        changed = [m for m in guard.others if m.get("method") == "notifications/tools/list_changed"]
        if not changed:  # the guard refreshes the list first: it may come after the call's answer
            changed = [await next_notification(guard, "notifications/tools/list_changed")]
        assert changed[0]["params"] == {"_meta": {SUBSCRIPTION_ID: "sub-1"}}
        listed = await guard.request("tools/list", {"_meta": meta()})
        assert "rec_fresh" in [t["name"] for t in listed["result"]["tools"]]
        # cancelled: no answer to the listen request, and no more notifications on it
        await guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "sub-1"}})
        guard.others.clear()
        await guard.request("tools/call", {"name": "rec_remove_tool", "arguments": {"name": "fresh"}, "_meta": meta()})
        await asyncio.sleep(1.0)
        listed = await guard.request("tools/list", {"_meta": meta()})
        assert "rec_fresh" not in [t["name"] for t in listed["result"]["tools"]]
        assert [m for m in guard.others if m.get("method") == "notifications/tools/list_changed" or m.get("id") == "sub-1"] == []


async def test_listen_without_tools_gets_no_tool_changes_and_a_reload_reaches_a_listener(tmp_path: Path) -> None:
    only_echo = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo"]}]}]
    wider = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo", "rec/read_note"]}]}]
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command())}, only_echo)
    async with raw_guard(config) as guard:
        await discover(guard)
        ack = await listen(guard, 1, {"promptsListChanged": True})
        assert ack["params"]["notifications"] == {"promptsListChanged": True}
        tools = await guard.request("tools/list", {"_meta": meta()})
        assert [t["name"] for t in tools["result"]["tools"]] == ["rec_echo"]
        await listen(guard, 2, {"toolsListChanged": True})
        write_policies(tmp_path / "policies", wider)
        changed = await next_notification(guard, "notifications/tools/list_changed")
        assert changed["params"] == {"_meta": {SUBSCRIPTION_ID: 2}}  # only the listener that asked for tools
        tools = await guard.request("tools/list", {"_meta": meta()})
        assert [t["name"] for t in tools["result"]["tools"]] == ["rec_echo", "rec_read_note"]
        assert [m for m in guard.others if m.get("method") == "notifications/tools/list_changed"] == []


async def test_listen_is_refused_without_a_known_filter(config: Path) -> None:
    async with raw_guard(config) as guard:
        await discover(guard)
        bad = await guard.request("subscriptions/listen", {"notifications": "all", "_meta": meta()})
        assert bad["error"]["code"] == -32602, bad


async def test_logs_follow_the_request_that_opted_in_not_the_session(tmp_path: Path) -> None:
    """Another upstream's logs never ride on a request that opted in, and the opt-in of an
    ``input_required`` retry counts from the retry on."""
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command("--chatty"), roots="pass"),
                                           "quiet": stdio_upstream(recording_server_command("--name", "quiet"))})
    async with raw_guard(config) as guard:
        await discover(guard)
        verbose = meta(ROOTS, **{"io.modelcontextprotocol/logLevel": "debug"})
        await guard.send({"jsonrpc": "2.0", "id": "waiting", "method": "tools/call",
                          "params": {"name": "quiet_hang", "arguments": {}, "_meta": verbose}})
        await asyncio.sleep(0.5)
        chatty = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": False}, "_meta": meta()})
        assert "chatty done" in chatty["result"]["content"][0]["text"]
        assert logs_of(guard.others) == []  # rec's logs: not for the request waiting on quiet
        await guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "waiting"}})

        first = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {}, "_meta": meta(ROOTS)})
        asked = first["result"]
        assert asked["resultType"] == "input_required"
        assert logs_of(guard.others) == []
        answers = {key: {"roots": []} for key in asked["inputRequests"]}
        done = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {}, "inputResponses": answers,
                                                  "requestState": asked["requestState"],
                                                  "_meta": meta(ROOTS, **{"io.modelcontextprotocol/logLevel": "error"})})
        assert "chatty done" in done["result"]["content"][0]["text"]
        assert logs_of(guard.others) == [("error", "chatty error after")]
        assert [m for m in guard.others if m.get("id") == "waiting"] == []  # cancelled: never answered


async def test_a_modern_upstream_is_told_the_requests_log_level(tmp_path: Path) -> None:
    """A 2026-07-28 upstream emits logs only for a request that carries the opt-in: the guard passes
    the host's level on (and nothing when the host did not opt in)."""
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command("--chatty"), protocol="modern")})
    async with raw_guard(config) as guard:
        await discover(guard)
        silent = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": False}, "_meta": meta()})
        assert "chatty done" in silent["result"]["content"][0]["text"]
        assert logs_of(guard.others) == []
        loud = await guard.request("tools/call", {"name": "rec_chatty", "arguments": {"ask": False},
                                                  "_meta": meta(**{"io.modelcontextprotocol/logLevel": "error"})})
        assert "chatty done" in loud["result"]["content"][0]["text"]
        assert logs_of(guard.others) == [("error", "chatty error before"), ("error", "chatty error after")]


async def test_an_open_listen_does_not_hold_the_guard_when_the_host_leaves(config: Path) -> None:
    async with raw_guard(config, process=True) as guard:
        await discover(guard)
        await listen(guard, "forever", {"toolsListChanged": True})
        assert guard.proc.stdin is not None
        guard.proc.stdin.close()
        assert await asyncio.wait_for(guard.proc.wait(), 5) == 0  # not the 10 s drain of a real request


async def test_a_listener_is_not_told_of_a_change_it_cannot_see(tmp_path: Path) -> None:
    """A tool this principal may not see appears upstream: its list did not change, so nothing is
    sent (a notification would reveal the hidden tool's arrival)."""
    rules = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/add_tool", "rec/remove_tool", "rec/visible"]}]}]
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command())}, rules)
    async with raw_guard(config) as guard:
        await discover(guard)
        await listen(guard, "sub", {"toolsListChanged": True})
        await guard.request("tools/call", {"name": "rec_add_tool", "arguments": {"name": "hidden"}, "_meta": meta()})
        await guard.request("tools/call", {"name": "rec_add_tool", "arguments": {"name": "visible"}, "_meta": meta()})

        async def names() -> list[str]:
            listed = await guard.request("tools/list", {"_meta": meta()})
            return [t["name"] for t in listed["result"]["tools"]]

        assert "rec_visible" in await eventually(names, lambda found: "rec_visible" in found)
        await asyncio.sleep(0.5)
        assert "rec_hidden" not in await names()
        changed = [m for m in guard.others if m.get("method") == "notifications/tools/list_changed"]
        assert changed == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                            "params": {"_meta": {SUBSCRIPTION_ID: "sub"}}}]  # the visible addition only


async def test_open_listens_are_capped(config: Path) -> None:
    async with raw_guard(config) as guard:
        await discover(guard)
        for i in range(16):
            await listen(guard, f"l{i}", {"toolsListChanged": True})
        refused = await guard.request("subscriptions/listen", {"notifications": {"toolsListChanged": True}, "_meta": meta()})
        assert refused["error"]["code"] == -32600 and "at most 16" in refused["error"]["message"], refused
        await guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "l0"}})
        await asyncio.sleep(0.3)
        await listen(guard, "again", {"toolsListChanged": True})  # a slot was freed
