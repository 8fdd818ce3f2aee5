"""Replicas behind a real load balancer with no stickiness: three ``serve`` processes, one real
Redis, HAProxy round-robin per request.  A handshake-era session is served by whichever replica
a request lands on, and killing a replica mid-run loses no session and no audit record."""

from __future__ import annotations

import asyncio
import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from fixtures import (
    ALLOW_ALL,
    conformance_server_command,
    free_port,
    mcp_guard_bin,
    requires_tools,
    serve_http,
    stdio_upstream,
    write_guard_config,
)
from fixtures.ops import private_redis
from fixtures.replicas import balanced, serve_replicas
from fixtures.serving import ServeSetup, cli, connect
from mcp.types import LoggingMessageNotificationParams

from mcp_guard.grants import generate_keypair, issue_grant, public_jwk

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}


def replicas_config(tmp: Path, redis_url: str, balancer: int) -> ServeSetup:
    setup = ServeSetup(tmp)
    doc = yaml.safe_load(setup.config.read_text())
    doc["state"] = {"url": redis_url}
    doc["audit"]["include_args"] = True
    doc["serve"] = {"allowed_hosts": [f"127.0.0.1:{balancer}"], "drain_timeout": "2s"}
    setup.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return setup


async def test_three_replicas_behind_haproxy_lose_no_session_when_one_dies(tmp_path: Path) -> None:
    balancer = free_port()
    with private_redis(tmp_path) as (redis_url, _):
        setup = replicas_config(tmp_path, redis_url, balancer)
        token = setup.grant("alice@example.com", "planner", ["rec/echo"])
        with serve_replicas(setup.config) as replicas, balanced(tmp_path, balancer, replicas) as url:
            async with connect(url, token) as client:
                for i in range(6):
                    assert not (await client.call_tool("rec_echo", {"text": f"before {i}"})).is_error
                replicas.procs[1].send_signal(signal.SIGKILL)  # one replica dies mid-run, sessions and all
                replicas.procs[1].wait(10)
                for i in range(6):
                    assert not (await client.call_tool("rec_echo", {"text": f"after {i}"})).is_error
                assert [t.name for t in (await client.list_tools()).tools]
            # another caller's token never opens this session on any replica
            mallory = setup.grant("mallory@example.com", "planner", ["rec/echo"])
            async with httpx2.AsyncClient(timeout=30) as raw:
                opened = await raw.post(url, json=INIT, headers={"Authorization": f"Bearer {token}",
                                                                  "Accept": "application/json, text/event-stream"})
                sid = opened.headers["mcp-session-id"]
                for _ in range(4):  # whichever replica it lands on
                    stolen = await raw.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers={
                        "Authorization": f"Bearer {mallory}", "Mcp-Session-Id": sid, "Accept": "application/json"})
                    assert stolen.status_code == 403
                gone = await raw.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers={
                    "Authorization": f"Bearer {token}", "Mcp-Session-Id": "0" * 32, "Accept": "application/json"})
                assert gone.status_code == 404
    texts = [f"before {i}" for i in range(6)] + [f"after {i}" for i in range(6)]
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    allowed = [r for r in audit if r.get("tool") == "echo" and r["decision"] == "allow"]
    assert sorted(r["args"]["text"] for r in allowed) == sorted(texts)  # every call audited once, none lost
    assert len({r["pid"] for r in allowed}) >= 2  # round robin: several replicas served the one session
    assert sorted(args["text"] for _, args in setup.record.calls()) == sorted(texts)
    adopted = [n for n in range(3) if "adopted from the shared state store" in (tmp_path / f"replica{n}.log").read_text()]
    assert adopted, "another replica took the session over"
    verify = await cli("audit", "verify", str(tmp_path / "audit.jsonl"))
    assert verify.returncode == 0, verify.stdout + verify.stderr  # one hash chain across the replicas


# --------------------------------------------------------------------------- the official suite through the balancer


@pytest.mark.timeout(600)
@requires_tools("conformance")
def test_conformance_suite_through_three_replicas_scores_as_through_one(tmp_path: Path) -> None:
    """The suite's server scenarios through HAProxy (round robin, no stickiness) in front of three
    replicas on one Redis score what they score against one replica: every answer to an upstream's
    question (sampling, elicitation) reaches the replica that asked it, whichever one it lands on."""
    from fixtures.suites import failed, passed, run_conformance

    balancer = free_port()
    url = f"http://localhost:{balancer}/mcp"
    single = tmp_path / "single"  # the one replica's own config, Redis and audit file: the two runs share nothing
    single.mkdir()
    with private_redis(tmp_path) as (redis_url, _), private_redis(single) as (single_redis, _):
        config, token, _ = conformance_replicas(tmp_path, redis_url, balancer)
        single_config, single_token, _ = conformance_replicas(single, single_redis, balancer)
        one_port = free_port()
        with (serve_http([str(mcp_guard_bin()), "serve", "--config", str(single_config), "--port", str(one_port)], one_port,
                         log=tmp_path / "one.log"),
              serve_replicas(config) as replicas, balanced(tmp_path, balancer, replicas),
              ThreadPoolExecutor(1) as side):  # the two suite runs mostly wait: side by side
            one = side.submit(run_conformance, f"http://localhost:{one_port}/mcp", tmp_path / "one", bearer=single_token)
            through = run_conformance(url, tmp_path / "balanced", bearer=token)
            alone = one.result()
    print(f"conformance: one replica {len(passed(alone))} passed, {len(failed(alone))} failed; "
          f"three behind HAProxy {len(passed(through))} passed, {len(failed(through))} failed: {sorted(failed(through))}")
    assert passed(alone) - passed(through) == set(), sorted(passed(alone) - passed(through))
    assert failed(through) <= failed(alone), sorted(failed(through) - failed(alone))
    assert {s for s, _ in passed(through)} >= {"tools-call-sampling", "tools-call-elicitation"}
    logs = "".join((tmp_path / f"replica{n}.log").read_text() for n in range(3))
    assert "adopted from the shared state store" in logs  # the balancer did spread the sessions


def conformance_replicas(tmp_path: Path, redis_url: str, balancer: int) -> tuple[Path, str, str]:
    """A config of the conformance fixture behind ``serve`` on ``redis_url``, and the grant chains
    of two callers (alice, mallory)."""
    key, pub = generate_keypair()
    (tmp_path / "idp.jwk").write_text(json.dumps(public_jwk(pub)))
    config = write_guard_config(
        tmp_path, {"conformance": stdio_upstream(conformance_server_command(), prefix=False)}, ALLOW_ALL,
        trust={"issuers": {"corp-idp": str(tmp_path / "idp.jwk")}}, state={"url": redis_url},
        audit={"path": str(tmp_path / "audit.jsonl")},
        serve={"url": f"http://localhost:{balancer}/mcp", "drain_timeout": "2s"})
    token, mallory = (issue_grant(key, "corp-idp", user, "planner", ["conformance/*"], resources=["conformance/*"],
                                  prompts=["conformance/*"]) for user in ("alice@example.com", "mallory@example.com"))
    return config, token, mallory


async def test_the_log_level_a_caller_set_holds_on_every_replica(tmp_path: Path) -> None:
    """``logging/setLevel`` lands on one replica; the session's record carries it, so the replicas
    that serve the session's later calls (adopting it, or holding it already) log at that level too."""
    balancer = free_port()
    told: list[str] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        told.append(f"{params.level}: {params.data}")

    with private_redis(tmp_path) as (redis_url, _):
        config, token, _ = conformance_replicas(tmp_path, redis_url, balancer)
        with serve_replicas(config) as replicas, balanced(tmp_path, balancer, replicas):
            async with connect(f"http://localhost:{balancer}/mcp", token, logging_callback=on_log) as client:
                assert not (await client.call_tool("test_tool_with_logging", {})).is_error
                assert [t for t in told if t.startswith("info")], "before: info messages reach the caller"
                await client.set_logging_level("error")
                await asyncio.sleep(0.5)  # the other replicas hear of it over Redis
                told.clear()
                for _ in range(6):  # round robin: every replica serves some of them
                    assert not (await client.call_tool("test_tool_with_logging", {})).is_error
                assert told == [], told
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len({r["pid"] for r in audit if r.get("tool") == "test_tool_with_logging"}) >= 2


async def test_answers_to_questions_through_the_balancer_reach_the_asker_and_forgeries_do_not(tmp_path: Path) -> None:
    """Raw HTTP through HAProxy: a sampling question arrives on a tools/call stream from one replica;
    mallory's answer to it on her own session, and on alice's, is refused (whichever replica it
    lands on) and audited; alice's answer, wherever it lands, completes the call."""
    balancer = free_port()
    accept = {"Accept": "application/json, text/event-stream"}
    with private_redis(tmp_path) as (redis_url, _):
        config, token, mallory_token = conformance_replicas(tmp_path, redis_url, balancer)
        with serve_replicas(config) as replicas, balanced(tmp_path, balancer, replicas):
            url = f"http://localhost:{balancer}/mcp"
            init = {**INIT, "params": {**INIT["params"], "capabilities": {"sampling": {}}}}
            async with httpx2.AsyncClient(timeout=30) as raw:
                alice = {**accept, "Authorization": f"Bearer {token}"}
                mallory = {**accept, "Authorization": f"Bearer {mallory_token}"}
                sid = (await raw.post(url, json=init, headers=alice)).headers["mcp-session-id"]
                alice["Mcp-Session-Id"] = sid
                await raw.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=alice)
                mallory["Mcp-Session-Id"] = (await raw.post(url, json=init, headers=mallory)).headers["mcp-session-id"]
                await raw.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=mallory)
                for n in range(3):
                    call = {"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call",
                            "params": {"name": "test_sampling", "arguments": {"prompt": f"p{n}"}}}
                    async with raw.stream("POST", url, json=call, headers=alice) as stream:
                        events = stream.aiter_lines()
                        question = await next_message(events)
                        assert question["method"] == "sampling/createMessage", question
                        answer = {"jsonrpc": "2.0", "id": question["id"], "result": {
                            "role": "assistant", "content": {"type": "text", "text": f"a{n}"}, "model": "m"}}
                        forged = await raw.post(url, json=answer, headers=mallory)  # on her own session
                        assert forged.status_code == 400, forged.text
                        stolen = await raw.post(url, json=answer, headers={**mallory, "Mcp-Session-Id": sid})
                        assert stolen.status_code == 403, stolen.text
                        landed = await raw.post(url, json=answer, headers=alice)
                        assert landed.status_code == 202, landed.text
                        again = await raw.post(url, json=answer, headers=alice)  # once per question
                        assert again.status_code == 400, again.text
                        done = await next_message(events)
                        assert done["id"] == 10 + n and f"a{n}" in json.dumps(done["result"]), done
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    refused = [(r["principal"][0], r["reason"]) for r in audit if r["decision"] == "deny" and r.get("kind") is None]
    forged = ("user:mallory@example.com", "mcp-guard refused an answer: no question of this session has this id")
    stolen = ("user:mallory@example.com", "mcp-guard refused the request: its principal is not the one that opened this session")
    twice = ("user:alice@example.com", "mcp-guard refused an answer: no question of this session has this id")
    assert sorted(refused) == sorted([forged, stolen, twice] * 3), refused


async def next_message(lines: Any) -> dict[str, Any]:
    """The next JSON-RPC message on an SSE stream."""
    async for line in lines:
        if line.startswith("data:"):
            message: dict[str, Any] = json.loads(line[5:])
            return message
    raise AssertionError("the stream ended")


# --------------------------------------------------------------------------- remembered approvals


async def test_an_approval_remembered_on_one_replica_is_not_asked_again_on_another(tmp_path: Path) -> None:
    """``approvals.remember: session`` on two replicas of one Redis, each addressed directly: the
    person approves alice's call (the queue, answered by the CLI) on replica A; the same call in the
    same session on replica B passes without asking.  Another session of alice's, and mallory's own
    session, with the very same call, are asked (and refused)."""
    note = {"path": "/srv/tickets/5.md", "text": "approved once"}
    with private_redis(tmp_path) as (redis_url, _):
        setup = replicas_config(tmp_path, redis_url, free_port())
        doc = yaml.safe_load(setup.config.read_text())
        doc["approvals"] = {"remember": "session", "timeout": "30s"}
        setup.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        config = str(setup.config)
        alice, mallory = (setup.grant(user, "planner", ["rec/write_note"]) for user in ("alice@example.com", "mallory@example.com"))

        async def queued(n: int) -> list[dict[str, Any]]:
            """Every request the queue holds once it holds ``n`` (answered ones too)."""
            for _ in range(150):
                done = await cli("approvals", "list", "--all", "--json", "--config", config)
                assert done.returncode == 0, done.stderr
                records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
                if len(records) >= n:
                    return records
                await asyncio.sleep(0.2)
            raise AssertionError(f"the queue never held {n} request(s)")

        with serve_replicas(setup.config, 2) as replicas:
            async with httpx2.AsyncClient(timeout=60) as raw:

                async def opened(url: str, token: str) -> dict[str, str]:
                    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
                    headers["Mcp-Session-Id"] = (await raw.post(url, json=INIT, headers=headers)).headers["mcp-session-id"]
                    await raw.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
                    return {**headers, "Accept": "application/json"}

                async def call(url: str, headers: dict[str, str], answer: str | None, n: int) -> dict[str, Any]:
                    """write_note on ``url``; ``answer`` (approve|reject) the n-th queued request, None: none is."""
                    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "rec_write_note", "arguments": note}}
                    sent = asyncio.ensure_future(raw.post(url, json=body, headers=headers))
                    if answer is not None:
                        waiting = [r for r in await queued(n) if r["status"] == "pending"]
                        assert len(waiting) == 1, waiting
                        done = await cli("approvals", answer, waiting[0]["id"], "--config", config, "--as", "ops@example.com")
                        assert done.returncode == 0, done.stderr
                    reply = (await sent).json()
                    assert isinstance(reply, dict)
                    return reply

                a, b = replicas.url(0), replicas.url(1)
                session = await opened(a, alice)
                first = await call(a, session, "approve", 1)
                assert first["result"]["isError"] is False, first
                again = await call(b, session, None, 0)  # replica B adopts the session: nobody is asked
                assert again["result"]["isError"] is False, again
                assert len(await queued(1)) == 1
                elsewhere = await call(b, await opened(b, alice), "reject", 2)  # alice's other session is asked
                assert elsewhere["result"]["isError"] is True, elsewhere
                stranger = await call(b, await opened(b, mallory), "reject", 3)  # so is mallory, same call
                assert stranger["result"]["isError"] is True, stranger
                assert len(await queued(3)) == 3
            assert "adopted from the shared state store" in replicas.log(1)
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    decided = [(r["principal"][0], r["decision"], r["approval"]["channel"]) for r in audit if r.get("tool") == "write_note"]
    assert decided == [("user:alice@example.com", "approved", "queue"), ("user:alice@example.com", "approved", "remembered"),
                       ("user:alice@example.com", "rejected", "queue"), ("user:mallory@example.com", "rejected", "queue")]
    pids = [r["pid"] for r in audit if r.get("tool") == "write_note"]
    assert pids[0] != pids[1]  # approved on one replica, remembered on the other
    assert [args for _, args in setup.record.calls()] == [note, note]
