"""The pump's forward and answer path against a raw line-level upstream
(``fixtures/raw_upstream.py``, which writes exactly the lines the test wants): what reaches the
upstream, and what reaches the host when the upstream misbehaves."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from fixtures import ALLOW_ALL, FIXTURES_DIR, stdio_upstream, write_policies
from proxy_harness import guard_session

from mcp_guard.proxy.reload import load_policy_set


def _raw(tmp_path: Path, mode: str) -> dict[str, Any]:
    return stdio_upstream([sys.executable, str(FIXTURES_DIR / "raw_upstream.py"), mode], protocol="legacy", timeout=10)


def _heard(answer: dict[str, Any]) -> tuple[list[str], Any]:
    """The params keys and the arguments the upstream received for this answer's call."""
    result = answer["result"]
    assert result["isError"] is False, answer
    keys, arguments = json.loads(result["content"][0]["text"])
    return keys, arguments


def _keys(answer: dict[str, Any]) -> list[str]:
    return _heard(answer)[0]


async def test_a_handshake_era_hosts_round_trip_keys_never_reach_the_upstream(tmp_path: Path) -> None:
    async with guard_session(tmp_path, {"raw": _raw(tmp_path, "plain")}) as host:
        await host.initialize()
        plain = await host.request("tools/call", {"name": "raw_probe", "arguments": {}})
        assert _keys(plain) == ["arguments", "name"]
        retry = await host.request("tools/call", {"name": "raw_probe", "arguments": {}, "requestState": "forged",
                                                  "inputResponses": {"x": {"action": "accept"}}, "extra": 1})
        assert _keys(retry) == ["arguments", "extra", "name"]


async def test_an_upstream_that_answers_twice_is_heard_once(tmp_path: Path) -> None:
    async with guard_session(tmp_path, {"raw": _raw(tmp_path, "twice")}) as host:
        await host.initialize()
        for rid in range(100, 105):
            answer = await host.request("tools/call", {"name": "raw_probe", "arguments": {"n": rid}}, rid=rid)
            assert answer["id"] == rid and _keys(answer) == ["arguments", "name"]
        await asyncio.sleep(0.2)  # the second copies have arrived by now: none reaches the host
        assert host.pending() == [] and host.others == []


async def test_an_answer_to_an_id_nobody_asked_for_is_dropped(tmp_path: Path) -> None:
    async with guard_session(tmp_path, {"raw": _raw(tmp_path, "stray")}) as host:
        await host.initialize()
        answer = await host.request("tools/call", {"name": "raw_probe", "arguments": {}}, rid="only")
        assert answer["id"] == "only" and _keys(answer) == ["arguments", "name"]
        await asyncio.sleep(0.2)
        assert host.pending() == [] and host.others == []


async def test_answers_out_of_order_each_reach_their_own_request(tmp_path: Path) -> None:
    async with guard_session(tmp_path, {"raw": _raw(tmp_path, "late")}) as host:
        await host.initialize()
        await host.handle({"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"name": "raw_probe", "arguments": {"a": 1}}})
        await asyncio.sleep(0.2)
        assert host.pending() == []  # held by the upstream until the second call arrives
        await host.handle({"jsonrpc": "2.0", "id": "b", "method": "tools/call", "params": {"name": "raw_probe", "arguments": {"b": 2}}})
        answers = [await host.next(), await host.next()]
        assert [a["id"] for a in answers] == ["b", "a"]  # in the order the upstream answered
        assert [_heard(a)[1] for a in answers] == [{"b": 2}, {"a": 1}]


async def test_a_reload_that_hides_a_tool_refuses_its_next_call(tmp_path: Path) -> None:
    """Whether a tool may be called is remembered per session; a new policy set forgets it."""
    async with guard_session(tmp_path, {"raw": _raw(tmp_path, "plain")}) as host:
        await host.initialize()
        assert _keys(await host.request("tools/call", {"name": "raw_probe", "arguments": {}})) == ["arguments", "name"]
        assert host.session is not None
        ctx = host.session.ctx
        write_policies(tmp_path / "policies", [{"id": "none", "rules": [{"effect": "deny", "tools": ["raw/probe"]}]}])
        ctx.policies = load_policy_set(ctx.config)
        hidden = await host.request("tools/call", {"name": "raw_probe", "arguments": {}}, rid="after")
        assert hidden == {"jsonrpc": "2.0", "id": "after", "error": {"code": -32602, "message": "Unknown tool: raw_probe"}}
        write_policies(tmp_path / "policies", ALLOW_ALL)
        ctx.policies = load_policy_set(ctx.config)
        assert _keys(await host.request("tools/call", {"name": "raw_probe", "arguments": {}})) == ["arguments", "name"]
