"""``mcp-guard serve`` under abuse: sessions capped per principal and expired when idle, the Host
header checked, bodies refused at the limit while they stream in, cancelled requests answered, and
a caller that can never approve its own call; two replicas on one real Redis counting limits per
principal, so neither re-initialising nor switching replica resets them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from fixtures import (
    RecordFile,
    free_port,
    real_mcp_guard_bin,
    recording_server_command,
    stdio_upstream,
    stop_process,
    tools_env,
    wait_for_port,
    write_guard_config,
)
from fixtures.serving import cli, serving_in_process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mcp_guard.grants import delegate, generate_keypair, issue_grant, public_jwk

pytestmark = pytest.mark.e2e

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def init(version: str = "2025-11-25") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class Guard:
    def __init__(self, tmp: Path, serve: dict[str, Any], state: str | None = None, approvals: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.key, pub = generate_keypair()
        (tmp / "issuer.jwk").write_text(json.dumps(public_jwk(pub)))
        self.record = RecordFile(tmp / "rec.jsonl")
        self.config = write_guard_config(
            tmp,
            {"rec": stdio_upstream(recording_server_command(), env=self.record.env())},
            [{"id": "rec", "rules": [{"effect": "allow", "tools": ["rec/*"]}, {"effect": "approve", "tools": ["rec/write_note"]}],
              "limits": [{"tools": ["rec/echo"], "per_minute": 3}]}],
            trust={"issuers": {"corp": str(tmp / "issuer.jwk")}},
            state={"url": state or f"sqlite:///{tmp / 'state.db'}"},
            audit={"path": str(tmp / "audit.jsonl")},
            approvals=approvals or {"timeout": "60s"},
            serve=serve,
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.in_process = contextlib.ExitStack()

    def start(self, *, process: bool = False) -> str:
        """A serve of this config on a free port: in this test process (``serving_in_process``) unless
        the test is about the serve process itself (its memory, replicas of it)."""
        port = free_port()
        if not process:
            self.in_process.enter_context(serving_in_process(self.config, port))
            return f"http://127.0.0.1:{port}/mcp"
        log = (self.tmp / f"serve-{port}.log").open("ab")
        proc = subprocess.Popen([str(real_mcp_guard_bin()), "serve", "--config", str(self.config), "--port", str(port)],  # its memory is a subject
                                stdout=log, stderr=subprocess.STDOUT, env=tools_env())
        self.procs.append(proc)
        wait_for_port(port, timeout=60, proc=proc)
        return f"http://127.0.0.1:{port}/mcp"

    def grant(self, user: str, agent: str = "planner", tools: tuple[str, ...] = ("rec/*",)) -> str:
        return issue_grant(self.key, "corp", user, agent, list(tools))

    def stop(self) -> None:
        self.in_process.close()
        for proc in self.procs:
            stop_process(proc)


@pytest.fixture
def guard(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Guard]:
    """A guard whose ``serve:`` block is the test's ``SERVE`` entry (default: nothing set)."""
    g = Guard(tmp_path, SERVE.get(request.node.originalname, {}))
    try:
        yield g
    finally:
        g.stop()


SERVE: dict[str, dict[str, Any]] = {
    "test_one_principal_cannot_evict_anothers_session": {"max_sessions_per_principal": 2},
    "test_an_idle_session_expires": {"session_idle": "2s"},
    "test_one_delegating_root_hits_its_cap_with_every_sub_agent_it_mints": {"max_sessions_per_root": 3},
    "test_the_global_session_cap_refuses_new_sessions": {"max_sessions": 2},
}


async def open_session(http: httpx2.AsyncClient, url: str, token: str) -> str:
    res = await http.post(url, json=init(), headers={**ACCEPT, "Authorization": f"Bearer {token}"})
    assert res.status_code == 200, res.text
    return str(res.headers["mcp-session-id"])


async def ping(http: httpx2.AsyncClient, url: str, token: str, sid: str) -> int:
    res = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
                          headers={**ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": sid})
    return res.status_code


async def test_one_principal_cannot_evict_anothers_session(guard: Guard) -> None:
    url = guard.start()
    alice, mallory = guard.grant("alice"), guard.grant("mallory")
    async with httpx2.AsyncClient() as http:
        kept = await open_session(http, url, alice)
        mine = [await open_session(http, url, mallory) for _ in range(20)]
        assert await ping(http, url, alice, kept) == 200  # untouched by mallory's flood
        assert [await ping(http, url, mallory, s) for s in mine[-3:]] == [404, 200, 200]  # only mallory's own went


def refusals(guard: Guard) -> list[dict[str, Any]]:
    """Audit records of requests the transport refused before any session handled them."""
    path = guard.tmp / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if r["decision"] == "deny" and r["kind"] is None]


async def test_one_delegating_root_hits_its_cap_with_every_sub_agent_it_mints(guard: Guard) -> None:
    """An agent holding a delegable root mints sub-agent principals offline, one session each: all of
    them count against the root's cap (3), the refusals are audited, another root is untouched."""
    url = guard.start()
    planner_key, planner_pub = generate_keypair()
    root = issue_grant(guard.key, "corp", "alice", "planner", ["rec/*"], agent_key=planner_pub, depth=1)
    subs = [delegate(root, planner_key, f"sub{i}", ["rec/*"]) for i in range(6)]
    async with httpx2.AsyncClient() as http:
        opened = [await open_session(http, url, root)] + [await open_session(http, url, sub) for sub in subs[:2]]
        for sub in subs[2:]:
            res = await http.post(url, json=init(), headers={**ACCEPT, "Authorization": f"Bearer {sub}"})
            assert res.status_code == 429 and "delegating root already holds 3 sessions" in res.text
        stateless = await http.post(url, headers={**ACCEPT, "Authorization": f"Bearer {subs[5]}"}, json={
            "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "rec_echo", "arguments": {"text": "x"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {},
                      "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}}})
        assert stateless.status_code == 429
        assert await open_session(http, url, guard.grant("bob"))  # another root: its own count
        assert [await ping(http, url, t, s) for t, s in zip([root, *subs[:2]], opened, strict=True)] == [200, 200, 200]
        ended = await http.delete(url, headers={"Authorization": f"Bearer {subs[0]}", "Mcp-Session-Id": opened[1]})
        assert ended.status_code == 200
        assert await open_session(http, url, subs[2])  # room again once one of the root's sessions ended
    assert guard.record.calls() == []
    refused = refusals(guard)
    assert [r["principal"][-1] for r in refused] == ["agent:sub2", "agent:sub3", "agent:sub4", "agent:sub5", "agent:sub5"]
    assert all("mcp-guard refused a new session" in r["reason"] and r["verified"] for r in refused)


async def test_the_global_session_cap_refuses_new_sessions(guard: Guard) -> None:
    url = guard.start()
    async with httpx2.AsyncClient() as http:
        tokens = [guard.grant(user) for user in ("alice", "bob")]
        kept = [await open_session(http, url, token) for token in tokens]
        res = await http.post(url, json=init(), headers={**ACCEPT, "Authorization": f"Bearer {guard.grant('carol')}"})
        assert res.status_code == 503 and res.headers["retry-after"] == "60" and "already holds 2 sessions" in res.text
        assert [await ping(http, url, t, s) for t, s in zip(tokens, kept, strict=True)] == [200, 200]  # nobody pushed out
    assert [(r["user"], r["method"]) for r in refusals(guard)] == [("carol", "initialize")]


async def test_an_idle_session_expires(guard: Guard) -> None:
    url = guard.start()
    alice = guard.grant("alice")
    async with httpx2.AsyncClient() as http:
        sid = await open_session(http, url, alice)
        assert await ping(http, url, alice, sid) == 200
        await asyncio.sleep(6)  # idle 2 s, swept every second: gone by then (any probe would refresh it)
        assert await ping(http, url, alice, sid) == 404


async def test_the_host_header_is_checked(guard: Guard) -> None:
    url = guard.start()
    async with httpx2.AsyncClient() as http:
        res = await http.post(url, json=init(), headers={**ACCEPT, "Host": "attacker.example", "Authorization": f"Bearer {guard.grant('a')}"})
        assert res.status_code == 421
        assert (await http.post(url.replace("127.0.0.1", "localhost"), json=init(),
                                headers={**ACCEPT, "Authorization": f"Bearer {guard.grant('a')}"})).status_code == 200


async def test_a_request_with_two_host_headers_is_refused_whichever_comes_first(guard: Guard) -> None:
    url = guard.start()
    port = int(url.split(":")[2].split("/")[0])
    body = json.dumps(init()).encode()
    for hosts in ((f"127.0.0.1:{port}", "attacker.example"), ("attacker.example", f"127.0.0.1:{port}")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = "".join(f"Host: {h}\r\n" for h in hosts)
        writer.write(f"POST /mcp HTTP/1.1\r\n{head}Authorization: Bearer {guard.grant('a')}\r\n"
                     f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        status = (await reader.readline()).split()[1]
        writer.close()
        assert status in (b"400", b"421"), hosts  # never served under a Host it did not check


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's memory")
async def test_a_huge_body_is_refused_at_the_limit_without_buffering_it(guard: Guard) -> None:
    url = guard.start(process=True)  # the serve process's own memory is the subject
    pid = guard.procs[-1].pid
    before = _rss_kib(pid)
    sent = 0

    async def body() -> AsyncIterator[bytes]:  # 200 MiB, chunked: no Content-Length to refuse early on
        nonlocal sent
        chunk = b" " * (1024 * 1024)
        for _ in range(200):
            sent += len(chunk)
            yield chunk

    async with httpx2.AsyncClient(timeout=60) as http:
        try:
            res = await http.post(url, content=body(), headers={**ACCEPT, "Authorization": f"Bearer {guard.grant('a')}"})
            assert res.status_code == 413
        except httpx2.HTTPError:
            pass  # the server answered 413 and closed the connection before the client finished sending
    assert sent < 64 * 1024 * 1024, "the server kept reading past the limit"
    assert _rss_kib(pid) - before < 64 * 1024, "the server buffered the body"
    assert guard.procs[-1].poll() is None


async def test_a_cancelled_request_is_answered(guard: Guard) -> None:
    url = guard.start()
    alice = guard.grant("alice")
    async with httpx2.AsyncClient(timeout=30) as http:
        sid = await open_session(http, url, alice)
        headers = {**ACCEPT, "Authorization": f"Bearer {alice}", "Mcp-Session-Id": sid}
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        call = asyncio.ensure_future(http.post(url, headers=headers, json={
            "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "rec_hang", "arguments": {}}}))
        await asyncio.sleep(1.0)
        assert not call.done()
        cancel = await http.post(url, headers=headers, json={
            "jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "user"}})
        assert cancel.status_code == 202
        answer = await asyncio.wait_for(call, 10)
    assert answer.status_code == 200 and answer.json()["id"] == 7 and answer.json()["error"]["code"] == -32800


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_caller_cannot_approve_its_own_call(guard: Guard, mode: str) -> None:
    url = guard.start()
    asked: list[Any] = []

    async def approve_myself(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"approve": True})

    headers = {"Authorization": f"Bearer {guard.grant('alice')}"}
    async with create_mcp_http_client(headers=headers) as http, Client(
        streamable_http_client(url, http_client=http), mode=mode, elicitation_callback=approve_myself  # type: ignore[arg-type]
    ) as client:
        call = asyncio.ensure_future(client.call_tool("rec_write_note", {"path": "n", "text": "t"}))
        waiting = await queued(guard)
        assert len(waiting) == 1, "the call must wait in the approval queue"
        assert guard.record.calls() == [] and not call.done()
        done = await cli("approvals", "approve", waiting[0]["id"], "--as", "oncall@example.com", "--config", str(guard.config))
        assert done.returncode == 0, done.stderr
        result = await asyncio.wait_for(call, 30)
    assert not result.is_error and asked == []  # released by the queue; the caller was never asked
    assert guard.record.tools_called() == ["write_note"]
    last = [json.loads(line) for line in (guard.tmp / "audit.jsonl").read_text().splitlines()][-1]
    assert last["approver"] == "oncall@example.com" and last["approval"]["channel"] == "queue"
    # a hand-made 2026-07-28 answer ({approve: true} with no sealed state) waits in the queue too
    async with httpx2.AsyncClient(timeout=60) as raw:
        forged = asyncio.ensure_future(raw.post(url, headers={**ACCEPT, **headers}, json={
            "jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "rec_write_note", "arguments": {"path": "n", "text": "t"},
                       "inputResponses": {"approval": {"action": "accept", "content": {"approve": True}}},
                       "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                 "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}}}))
        waiting = await queued(guard)
        assert len(waiting) == 1 and guard.record.tools_called() == ["write_note"]
        done = await cli("approvals", "reject", waiting[0]["id"], "--config", str(guard.config))
        assert done.returncode == 0, done.stderr
        answer = await asyncio.wait_for(forged, 30)
    assert answer.status_code == 200 and answer.json()["result"]["isError"]
    assert guard.record.tools_called() == ["write_note"]  # still only the one the queue released


async def queued(guard: Guard) -> list[dict[str, Any]]:
    """The pending approval requests, once there are any (``mcp-guard approvals list`` in a second process)."""
    waiting: list[dict[str, Any]] = []
    for _ in range(60):
        listed = await cli("approvals", "list", "--json", "--config", str(guard.config))
        waiting = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
        if waiting:
            break
        await asyncio.sleep(0.2)
    return waiting

async def _echo(http: httpx2.AsyncClient, url: str, token: str, i: int) -> bool:
    """A new session (re-initialise) for each call; True when the call went through."""
    sid = await open_session(http, url, token)
    headers = {**ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": sid}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    res = await http.post(url, headers=headers, json={
        "jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "rec_echo", "arguments": {"text": str(i)}}})
    body = res.json()
    assert "result" in body, body
    return not body["result"].get("isError")


async def test_rate_limits_hold_across_sessions_and_replicas(tmp_path: Path, redis_url: str) -> None:
    guard = Guard(tmp_path, {}, state=redis_url)
    try:
        one, two = guard.start(process=True), guard.start(process=True)  # two replicas: two processes
        alice, bob = guard.grant("alice-replicas"), guard.grant("bob-replicas")
        async with httpx2.AsyncClient(timeout=30) as http:
            # per_minute: 3 for rec/echo, alternating replicas and opening a new session every call
            through = [await _echo(http, (one, two)[i % 2], alice, i) for i in range(6)]
            assert through == [True, True, True, False, False, False]
            assert await _echo(http, two, bob, 99)  # another principal has its own budget
        assert len(guard.record.calls()) == 4
    finally:
        guard.stop()
