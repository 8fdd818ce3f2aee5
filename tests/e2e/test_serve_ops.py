"""Operating ``serve``: the admin listener's probes and Prometheus metrics, and the drain on
SIGTERM - real ``serve`` processes, real HTTP, real signals."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import httpx2
import pytest
from fixtures import free_port, stdio_upstream
from fixtures.ops import OpsSetup, private_redis
from fixtures.serving import connect
from mcp.types import LoggingMessageNotificationParams

pytestmark = pytest.mark.e2e

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
ACCEPT = "application/json, text/event-stream"


async def test_probes_and_prometheus_metrics(tmp_path: Path) -> None:
    ops = OpsSetup(tmp_path)
    ops.change(lambda doc: doc["upstreams"]["rec"].update(required=True))
    token = ops.grant("alice@example.com", "planner", ["rec/echo"])
    with ops.running():
        async with httpx2.AsyncClient() as http:
            assert (await http.get(f"{ops.admin}/healthz")).json() == {"status": "ok"}
            # the main port answers /healthz too, whatever Host a probe names (nothing in it is secret)
            main = await http.get(f"http://127.0.0.1:{ops.port}/healthz", headers={"Host": "10.1.2.3:8765"})
            assert (main.status_code, main.json()) == (200, {"status": "ok"})
            for _ in range(150):  # ready once the required upstream is up
                ready = await http.get(f"{ops.admin}/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert ready.json() == {"status": "ready"}
            async with connect(ops.url, token) as client:
                assert not (await client.call_tool("rec_echo", {"text": "hi"})).is_error
            scrape = await http.get(f"{ops.admin}/metrics")
            # the admin port serves no MCP, and the MCP port no metrics
            assert (await http.post(f"{ops.admin}/mcp", json=INIT)).status_code == 404
            assert (await http.get(f"http://127.0.0.1:{ops.port}/metrics")).status_code == 404
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain; version=")
    text = scrape.text
    decisions = [line for line in text.splitlines() if line.startswith("mcp_guard_decisions_total{")]
    assert any('mcp_guard_decision="allow"' in line and line.endswith(" 1.0") for line in decisions), decisions
    assert "# TYPE mcp_server_operation_duration_seconds histogram" in text
    assert 'mcp_server_operation_duration_seconds_count{' in text and 'mcp_method_name="tools/call"' in text
    assert "# TYPE mcp_client_operation_duration_seconds histogram" in text
    assert "alice" not in text  # no principal in a metric label: unbounded, and personal


async def test_readyz_names_what_is_missing(tmp_path: Path) -> None:
    ops = OpsSetup(tmp_path)
    broken = stdio_upstream([sys.executable, "-c", "import sys; sys.exit(3)"])

    def edit(doc: dict) -> None:
        doc["upstreams"]["must"] = {**broken, "required": True}
        doc["upstreams"]["maybe"] = dict(broken)  # not required: never holds readiness back
        doc.pop("policies")

    ops.change(edit)
    with private_redis(tmp_path) as (redis_url, redis):
        ops.change(lambda doc: doc["state"].update(url=redis_url))
        with ops.running():
            async with httpx2.AsyncClient() as http:
                await asyncio.sleep(1.0)
                first = await http.get(f"{ops.admin}/readyz")
                redis.terminate()
                redis.wait(10)
                second = await http.get(f"{ops.admin}/readyz")
                alive = await http.get(f"{ops.admin}/healthz")
    assert first.status_code == 503 and first.headers["content-type"] == "application/json"
    missing = {m["component"]: m["reason"] for m in first.json()["missing"]}
    assert set(missing) == {"policies", "upstream must"}, missing
    assert missing["upstream must"].startswith("required and ")
    later = {m["component"]: m["reason"] for m in second.json()["missing"]}
    assert second.status_code == 503 and "redis:// does not answer" in later["state store"], later
    assert alive.status_code == 200  # alive is not ready: a probe must not restart a guard that waits for redis


async def test_sigterm_drains_in_flight_work_and_ends_streams_with_a_retry_hint(tmp_path: Path) -> None:
    ops = OpsSetup(tmp_path, drain="10s")
    token = ops.grant("alice@example.com", "planner", ["rec/slow", "rec/echo"])
    with ops.running() as proc:
        headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
        async with httpx2.AsyncClient(timeout=30) as raw, httpx2.AsyncClient(timeout=30) as other:
            opened = await raw.post(ops.url, json=INIT, headers=headers)
            sid = opened.headers["mcp-session-id"]
            session = {**headers, "Mcp-Session-Id": sid}
            await raw.post(ops.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
            listen_events: list[str] = []

            async def listen() -> None:
                async with other.stream("GET", ops.url, headers={**session, "Accept": "text/event-stream"}) as stream:
                    async for line in stream.aiter_lines():
                        listen_events.append(line)

            listening = asyncio.create_task(listen())
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "rec_slow", "arguments": {"seconds": 2}}}
            slow = asyncio.create_task(raw.post(ops.url, json=call, headers={**session, "Accept": "application/json"}))
            await asyncio.sleep(0.8)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with httpx2.AsyncClient(timeout=5) as fresh:
                ready = await fresh.get(f"{ops.admin}/readyz")
                with pytest.raises(httpx2.HTTPError):  # the listening socket is closed: no new connections
                    await fresh.post(ops.url, json=INIT, headers=headers)
            done = (await slow).json()  # what was in flight is answered
            await asyncio.wait_for(listening, 10)
        code = await asyncio.to_thread(proc.wait, 15)
        took = time.monotonic() - started
    assert done["result"]["content"][0]["text"] == "slept 2.0s" and not done["result"].get("isError")
    assert ready.status_code == 503 and ready.json()["missing"][0]["component"] == "serve"
    assert "retry: 1000" in listen_events
    assert code == 0 and took < 10
    lines = ops.lines()
    started_line = [line for line in lines if "draining on SIGTERM" in line]
    ended_line = [line for line in lines if "drained in" in line]
    assert len(started_line) == 1 and len(ended_line) == 1, lines
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["tool"] for r in audit if r["decision"] == "allow"] == ["slow"]


async def test_a_drain_abandons_a_queued_approval_and_the_host_was_told_at_once(tmp_path: Path) -> None:
    from mcp_guard.state import open_store

    ops = OpsSetup(tmp_path, drain="1s")
    token = ops.grant("alice@example.com", "planner", ["rec/write_note"])
    told: list[str] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        told.append(str(params.data))

    with ops.running() as proc:
        async with connect(ops.url, token, logging_callback=on_log) as client:
            call = asyncio.create_task(client.call_tool("rec_write_note", {"path": "a", "text": "b"}))
            store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
            try:
                for _ in range(200):
                    pending = await store.approval_list()
                    if pending:
                        break
                    await asyncio.sleep(0.1)
                (waiting,) = pending
                for _ in range(50):  # told while the request still waits, not when it ends
                    if told:
                        break
                    await asyncio.sleep(0.1)
                assert told and f"approval request {waiting['id']}" in told[0] and "mcp-guard approvals approve" in told[0]
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 15)
                with pytest.raises(Exception):  # noqa: B017  the call is never answered by a guard that went away
                    await asyncio.wait_for(call, 10)
                record = await store.approval_get(waiting["id"])
            finally:
                await store.close()
    assert code == 0
    assert record is not None and record["status"] == "abandoned"
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (gone,) = [r for r in audit if r.get("approval", {}).get("answer") == "abandoned"]
    assert (gone["tool"], gone["decision"], gone["approval"]["id"]) == ("write_note", "rejected", waiting["id"])
    assert ops.record.tools_called() == []


async def test_json_logs_carry_the_trace_and_span_of_the_request(tmp_path: Path) -> None:
    from mcp_guard.state import open_store

    ops = OpsSetup(tmp_path)
    token = ops.grant("alice@example.com", "planner", ["rec/write_note"])
    env = {"MCP_GUARD_LOG_FORMAT": "json", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nobody listens: export never delays a call
    with ops.running(env=env) as proc:
        async with connect(ops.url, token) as client:
            call = asyncio.create_task(client.call_tool("rec_write_note", {"path": "a", "text": "b"}))
            store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
            try:
                for _ in range(200):
                    pending = await store.approval_list()
                    if pending:
                        break
                    await asyncio.sleep(0.1)
                (waiting,) = pending
                assert await store.approval_resolve(waiting["id"], False, "oncall@example.com", "not today")
            finally:
                await store.close()
            assert (await asyncio.wait_for(call, 30)).is_error
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
    lines = [json.loads(line) for line in ops.lines() if line.strip()]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    (asked,) = [line for line in lines if line["message"].startswith(f"approval {waiting['id']}:")]
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (decided,) = [r for r in audit if r.get("tool") == "write_note"]
    assert asked["trace_id"] == decided["trace_id"] and len(asked["trace_id"]) == 32
    assert asked["span_id"] == decided["span_id"] and len(asked["span_id"]) == 16  # logged while deciding
    assert any(line["message"].startswith("draining on SIGTERM") and "trace_id" not in line for line in lines)
