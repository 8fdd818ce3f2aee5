"""The channels toward a 2026-07-28 host, driven as raw JSON lines through ``mcp-guard run``.

A 2026-07-28 host has no session: every request carries its own ``_meta``.  Progress flows with
the token of the request the host is waiting on now (also after an ``input_required`` round trip),
upstream log messages reach only a request that opted in with ``io.modelcontextprotocol/logLevel``,
and list changes reach it only on its ``subscriptions/listen`` request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures import recording_server_command, stdio_upstream, write_guard_config
from helpers_proxy import RawGuard, raw_guard

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
