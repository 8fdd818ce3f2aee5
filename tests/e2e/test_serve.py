"""``mcp-guard serve``: Streamable HTTP at /mcp, identity from bearer grant chains, one set of
upstreams shared by every caller, each caller seeing and doing only what its own chain allows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from fixtures import (
    Mode,
)
from fixtures.serving import ServeSetup, cli, connect, serving_in_process
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeSetup]:
    setup = ServeSetup(tmp_path)
    with serving_in_process(setup.config, setup.port):
        yield setup


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_each_caller_gets_what_its_own_chain_allows(served: ServeSetup, mode: Mode) -> None:
    alice = served.grant("alice@example.com", "planner", ["rec/echo", "rec/read_note", "rec/delete_note"])
    bob = served.grant("bob@example.com", "reviewer", ["rec/read_note"])
    async with connect(served.url, alice, mode) as a, connect(served.url, bob, mode) as b:
        assert sorted(t.name for t in (await a.list_tools()).tools) == ["rec_echo", "rec_read_note"]  # delete: policy
        assert [t.name for t in (await b.list_tools()).tools] == ["rec_read_note"]
        assert not (await a.call_tool("rec_echo", {"text": "from alice"})).is_error
        with pytest.raises(MCPError) as hidden:
            await b.call_tool("rec_echo", {"text": "from bob"})
        assert hidden.value.error.message == "Unknown tool: rec_echo"
    assert [args for _, args in served.record.calls()] == [{"text": "from alice"}]
    audit = [json.loads(line) for line in (served.record.path.parent / "audit.jsonl").read_text().splitlines()]
    allowed = [r for r in audit if r["decision"] == "allow"]
    assert allowed[-1]["principal"] == ["user:alice@example.com", "agent:planner"] and allowed[-1]["verified"] is True
    hidden_call = audit[-1]  # bob's call to a tool his chain hides is audited too, as unknown
    assert (hidden_call["decision"], hidden_call["tool"], hidden_call["principal"][0]) == ("unknown", "rec_echo", "user:bob@example.com")


async def test_no_or_bad_token_is_401_with_a_reason(served: ServeSetup) -> None:
    async with httpx2.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        none = await http.post(served.url, json=body, headers={"Accept": "application/json, text/event-stream"})
        assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer ")
        assert "error=" not in none.headers["www-authenticate"]  # RFC 6750 §3.1: no error code without credentials
        forged = served.grant("mallory", "x", ["rec/*"])[:-4] + "AAAA"
        bad = await http.post(served.url, json=body, headers={"Authorization": f"Bearer {forged}",
                                                            "Accept": "application/json, text/event-stream"})
        assert bad.status_code == 401 and "bad_signature" in bad.headers["www-authenticate"]
        evil = await http.post(served.url, json=body, headers={"Authorization": f"Bearer {served.grant('a', 'b', ['rec/echo'])}",
                                                             "Origin": "https://evil.example"})
        assert evil.status_code == 403
    assert served.record.calls() == []


async def test_a_session_is_bound_to_the_grant_that_opened_it(served: ServeSetup) -> None:
    alice = served.grant("alice@example.com", "planner", ["rec/echo"])
    bob = served.grant("bob@example.com", "reviewer", ["rec/echo"])
    async with httpx2.AsyncClient() as http:
        accept = {"Accept": "application/json, text/event-stream"}
        init = await http.post(served.url, headers={"Authorization": f"Bearer {alice}", **accept}, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        sid = init.headers["mcp-session-id"]
        stolen = await http.post(served.url, headers={"Authorization": f"Bearer {bob}", "Mcp-Session-Id": sid, **accept},
                                 json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert stolen.status_code == 403


async def test_an_approval_waits_in_the_queue_and_a_second_process_releases_it(served: ServeSetup) -> None:
    import asyncio

    alice = served.grant("alice@example.com", "planner", ["rec/write_note"])
    async with connect(served.url, alice) as client:
        call = asyncio.ensure_future(client.call_tool("rec_write_note", {"path": "n", "text": "t"}))
        for _ in range(100):
            listed = await cli("approvals", "list", "--json", "--config", str(served.config))
            waiting = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
            if waiting:
                break
            await asyncio.sleep(0.2)
        assert len(waiting) == 1 and not call.done() and served.record.calls() == []
        done = await cli("approvals", "approve", waiting[0]["id"], "--config", str(served.config))
        assert done.returncode == 0, done.stderr
        result = await asyncio.wait_for(call, 30)
    assert not result.is_error
    assert served.record.tools_called() == ["write_note"]


async def test_the_audit_names_a_session_as_every_replica_does_never_by_its_id(served: ServeSetup) -> None:
    """A session that moves to another replica keeps one name in the log, and the log never holds
    the Mcp-Session-Id (whoever reads the log could use it)."""
    from mcp_guard.serve.table import session_key

    alice = served.grant("alice@example.com", "planner", ["rec/echo"])
    accept = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {alice}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "h", "version": "1"}}}
    async with httpx2.AsyncClient(timeout=30) as http:
        opened = await http.post(served.url, json=init, headers=accept)
        sid = opened.headers["mcp-session-id"]
        headers = {**accept, "Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"}
        await http.post(served.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        called = await http.post(served.url, headers=headers, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "rec_echo", "arguments": {"text": "hi"}}})
        assert called.status_code == 200, called.text
    text = (served.record.path.parent / "audit.jsonl").read_text()
    calls = [r for line in text.splitlines() if (r := json.loads(line)).get("tool") == "echo"]
    assert calls and {r["session"] for r in calls} == {session_key(f"sid:{sid}")}
    assert sid not in text
