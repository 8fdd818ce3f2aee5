"""Span shape, attributes and parenting, with the SDK's in-memory exporter and metric reader.

The guard session runs in-process (so the exporter is in reach) against a real upstream
subprocess (tests/telemetry/meta_upstream.py), which records what it received.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import HOST_SPAN_ID, HOST_TRACE_ID, SECRET, TRACEPARENT, guard_yaml, received
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mcp_guard import telemetry
from mcp_guard.audit import AuditLog
from mcp_guard.config import load_config, telemetry_settings
from mcp_guard.proxy.guard import load_policy_set
from mcp_guard.proxy.session import GuardContext, GuardSession
from mcp_guard.state import open_store
from mcp_guard.telemetry.metrics import DURATION_BUCKETS
from mcp_guard.telemetry.settings import Settings


class Host:
    """The host side of an in-process session: collects what the guard sends back."""

    def __init__(self) -> None:
        self.answers: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.session: GuardSession | None = None
        self._ids = 0

    async def send(self, message: dict[str, Any]) -> None:
        fut = self.answers.get(message.get("id"))
        if fut is not None and "method" not in message and not fut.done():
            fut.set_result(message)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.session is not None
        self._ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answers[self._ids] = fut
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self._ids, "method": method}
        if params is not None:
            msg["params"] = params
        await self.session.handle(msg)
        return await asyncio.wait_for(fut, 30)


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader, telemetry.Hooks]]:
    spans = InMemorySpanExporter()
    metrics = InMemoryMetricReader()
    hooks = telemetry.start(Settings(), span_exporter=spans, metric_reader=metrics)
    yield spans, metrics, hooks
    hooks.shutdown()


@pytest.fixture
async def guarded(tmp_path: Path, exporter: Any) -> AsyncIterator[tuple[Host, Path, Path]]:
    record = tmp_path / "received.jsonl"
    audit_path = tmp_path / "audit.jsonl"
    config = load_config(guard_yaml(tmp_path, record))
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=open_store("memory://"),
                       audit=AuditLog(str(audit_path)), telemetry=exporter[2])
    host = Host()
    session = GuardSession(ctx, host)
    host.session = session
    await host.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "test-host", "version": "1"}})
    try:
        yield host, record, audit_path
    finally:
        await session.close()


def finished(exporter: Any) -> list[ReadableSpan]:
    spans, _, hooks = exporter
    hooks.flush()
    return list(spans.get_finished_spans())


def one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind is kind)]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in (span.attributes or {}).items()}


CHAIN = ["user:alice@example.com", "agent:support-bot"]


async def test_allowed_call_is_one_trace_server_guardrail_client(guarded: Any, exporter: Any) -> None:
    host, record, audit_path = guarded
    answer = await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": SECRET},
                                               "_meta": {"traceparent": TRACEPARENT, "tracestate": "rojo=1",
                                                         "baggage": "user=mallory"}})
    assert answer["result"]["isError"] is False
    spans = finished(exporter)
    server = one(spans, "tools/call notes_echo")
    guard = one(spans, "run_guardrail mcp-guard")
    client = one(spans, "tools/call echo")

    # one trace, joined to the host's: host span -> SERVER -> (INTERNAL guardrail, CLIENT)
    assert server.kind is SpanKind.SERVER and guard.kind is SpanKind.INTERNAL and client.kind is SpanKind.CLIENT
    for span in (server, guard, client):
        assert format(span.context.trace_id, "032x") == HOST_TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == HOST_SPAN_ID
    assert server.parent.is_remote
    assert guard.parent is not None and guard.parent.span_id == server.context.span_id
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert guard.end_time is not None and client.start_time is not None and guard.end_time <= client.start_time

    s = attrs(server)
    assert s["mcp.method.name"] == "tools/call"
    assert s["gen_ai.tool.name"] == "notes_echo"
    assert s["gen_ai.operation.name"] == "execute_tool"
    assert s["jsonrpc.request.id"] == "2"
    assert s["mcp.protocol.version"] == "2025-11-25"
    assert s["network.transport"] == "pipe"
    assert "mcp.session.id" in s  # legacy-era session
    assert "error.type" not in s

    g = attrs(guard)
    assert g["gen_ai.operation.name"] == "run_guardrail"
    assert g["gen_ai.guardrail.component.name"] == "mcp-guard"
    assert g["gen_ai.guardrail.target.type"] == "input"
    assert g["gen_ai.guardrail.target.subtype"] == "tool_call"
    assert g["gen_ai.guardrail.verdict.type"] == "allow"
    assert g["gen_ai.guardrail.action.type"] == "allow"
    assert g["gen_ai.guardrail.security.policy.id"] == "notes-policy"

    # the guard's own attributes (principal chain, grant, decision) on every guarded span
    for span in (server, guard, client):
        a = attrs(span)
        assert a["mcp_guard.principal.chain"] == CHAIN
        assert a["enduser.id"] == "alice@example.com"
        assert a["gen_ai.agent.name"] == "support-bot"
        assert a["mcp_guard.purpose"] == "ticket-triage"
        assert a["mcp_guard.delegation.depth"] == 1
        assert a["mcp_guard.decision"] == "allow"
        assert a["mcp_guard.policy.ids"] == ["notes-policy"]
        assert a["mcp_guard.decision.reason"]
        assert a["mcp_guard.upstream"] == "notes"

    c = attrs(client)
    assert c["mcp.method.name"] == "tools/call"
    assert c["gen_ai.tool.name"] == "echo"
    assert c["jsonrpc.request.id"].isdigit()

    # the upstream got the CLIENT span's context (W3C only: the host's baggage is not passed on)
    sent = [m for m in received(record) if m.get("method") == "tools/call"][-1]
    meta = sent["params"]["_meta"]
    assert meta["traceparent"] == f"00-{HOST_TRACE_ID}-{format(client.context.span_id, '016x')}-01"
    assert meta["tracestate"] == "rojo=1"
    assert "baggage" not in meta

    # the audit record points at the guardrail span
    record_line = json.loads(audit_path.read_text().splitlines()[-1])
    assert record_line["trace_id"] == HOST_TRACE_ID
    assert record_line["span_id"] == format(guard.context.span_id, "016x")


async def test_refused_call_has_deny_verdict_and_no_client_span(guarded: Any, exporter: Any) -> None:
    host, record, _ = guarded
    answer = await host.request("tools/call", {"name": "notes_write_note", "arguments": {"path": f"/etc/{SECRET}", "text": SECRET}})
    assert answer["result"]["isError"] is True
    spans = finished(exporter)
    server = one(spans, "tools/call notes_write_note")
    guard = one(spans, "run_guardrail mcp-guard")
    assert not [s for s in spans if s.name == "tools/call write_note"]
    assert not [m for m in received(record) if m.get("method") == "tools/call"]
    assert attrs(guard)["gen_ai.guardrail.verdict.type"] == "deny"
    assert attrs(guard)["gen_ai.guardrail.action.type"] == "block"
    assert attrs(guard)["mcp_guard.decision"] == "deny"
    assert attrs(server)["error.type"] == "tool_error"
    assert server.status.status_code is StatusCode.ERROR


async def test_a_prompt_is_decided_in_the_same_guardrail_span_and_audited_as_a_prompt(guarded: Any, exporter: Any) -> None:
    host, record, audit_path = guarded
    answer = await host.request("prompts/get", {"name": "notes_greet", "arguments": {"who": SECRET}})
    assert answer["result"]["messages"][0]["content"]["text"] == f"hello {SECRET}"
    assert [m["params"]["name"] for m in received(record) if m.get("method") == "prompts/get"] == ["greet"]
    spans = finished(exporter)
    server = one(spans, "prompts/get notes_greet")
    guard = one(spans, "run_guardrail mcp-guard")
    assert guard.parent is not None and guard.parent.span_id == server.context.span_id
    g = attrs(guard)
    assert g["gen_ai.guardrail.target.subtype"] == "prompt" and g["gen_ai.guardrail.target.id"] == "notes/greet"
    assert g["mcp_guard.decision"] == "allow" and g["gen_ai.guardrail.verdict.type"] == "allow"
    assert attrs(server)["mcp_guard.decision"] == "allow" and attrs(server)["gen_ai.prompt.name"] == "notes_greet"
    assert SECRET not in json.dumps([attrs(s) for s in spans])
    last = json.loads(audit_path.read_text().splitlines()[-1])
    assert (last["kind"], last["prompt"], last["exposed"], last["method"]) == ("prompt", "greet", "notes_greet", "prompts/get")
    assert last["span_id"] == format(guard.context.span_id, "016x")


async def test_no_argument_value_or_baggage_in_any_attribute(guarded: Any, exporter: Any) -> None:
    host, _, _ = guarded
    await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": SECRET}})
    await host.request("tools/call", {"name": "notes_write_note", "arguments": {"path": f"/etc/{SECRET}", "text": SECRET}})
    spans = finished(exporter)
    blob = json.dumps([attrs(s) for s in spans] + [[dict(e.attributes or {}) for e in s.events] for s in spans])
    assert SECRET not in blob
    assert "mallory" not in blob


async def test_unknown_tool_span_has_the_json_rpc_error(guarded: Any, exporter: Any) -> None:
    host, _, _ = guarded
    answer = await host.request("tools/call", {"name": "nope", "arguments": {}})
    assert answer["error"]["code"] == -32602
    server = one(finished(exporter), "tools/call nope")
    assert attrs(server)["error.type"] == "-32602"
    assert attrs(server)["rpc.response.status_code"] == "-32602"
    assert server.status.status_code is StatusCode.ERROR
    assert server.parent is None  # no trace context from the host: a new trace


async def test_tools_list_counts_listed_and_hidden(tmp_path: Path, exporter: Any) -> None:
    record = tmp_path / "received.jsonl"
    config = load_config(guard_yaml(tmp_path, record))
    # hide write_note: only echo is allowed in this variant
    from fixtures import write_policies

    write_policies(tmp_path / "policies", [{"id": "echo-only", "rules": [{"effect": "allow", "tools": ["notes/echo"]}]}])
    config = load_config(tmp_path / "guard.yaml")
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=open_store("memory://"),
                       telemetry=exporter[2])
    host = Host()
    session = GuardSession(ctx, host)
    host.session = session
    try:
        await host.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                          "clientInfo": {"name": "test-host", "version": "1"}})
        listed = await host.request("tools/list")
        assert [t["name"] for t in listed["result"]["tools"]] == ["notes_echo"]
    finally:
        await session.close()
    span = one(finished(exporter), "tools/list", SpanKind.SERVER)
    assert span.kind is SpanKind.SERVER
    assert attrs(span)["mcp_guard.tools.listed"] == 1
    assert attrs(span)["mcp_guard.tools.hidden"] == 1
    assert attrs(span)["mcp_guard.principal.chain"] == CHAIN


async def test_metrics_durations_and_decisions(guarded: Any, exporter: Any) -> None:
    host, _, _ = guarded
    await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": "a"}})
    await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": "b"}})
    await host.request("tools/call", {"name": "notes_write_note", "arguments": {"path": "/etc/x", "text": "c"}})
    _, reader, _ = exporter
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
                if metric.name.endswith(".duration"):
                    assert metric.unit == "s"
    decisions = {p.attributes["mcp_guard.decision"]: p.value for p in points["mcp_guard.decisions"]}
    assert decisions == {"allow": 2, "deny": 1}
    for p in points["mcp_guard.decisions"]:
        assert set(p.attributes) <= {"mcp_guard.decision", "mcp_guard.upstream", "gen_ai.tool.name"}
    server_calls = [p for p in points["mcp.server.operation.duration"] if p.attributes["mcp.method.name"] == "tools/call"]
    assert sum(p.count for p in server_calls) == 3
    assert list(server_calls[0].explicit_bounds) == list(DURATION_BUCKETS)
    client_calls = [p for p in points["mcp.client.operation.duration"] if p.attributes["mcp.method.name"] == "tools/call"]
    assert sum(p.count for p in client_calls) == 2
    for p in points["mcp.server.operation.duration"] + points["mcp.client.operation.duration"]:
        assert not any("principal" in k or k == "enduser.id" for k in p.attributes)


async def test_modern_era_has_no_session_id(tmp_path: Path, exporter: Any) -> None:
    record = tmp_path / "received.jsonl"
    config = load_config(guard_yaml(tmp_path, record))
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=open_store("memory://"),
                       telemetry=exporter[2])
    host = Host()
    session = GuardSession(ctx, host)
    host.session = session
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "modern-host", "version": "1"}}
    try:
        await host.request("server/discover", {"_meta": meta})
        answer = await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": "x"}, "_meta": meta})
        assert answer["result"]["isError"] is False
    finally:
        await session.close()
    server = one(finished(exporter), "tools/call notes_echo")
    assert attrs(server)["mcp.protocol.version"] == "2026-07-28"
    assert "mcp.session.id" not in attrs(server)


async def test_the_configured_sampler_decides(tmp_path: Path) -> None:
    """``OTEL_TRACES_SAMPLER``: ratio 0 records no new trace, but a sampled host parent still wins
    (parent-based), and an unrecorded call still carries trace context upstream (flags 00)."""
    settings = telemetry_settings(None, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    spans = InMemorySpanExporter()
    hooks = telemetry.start(settings, span_exporter=spans)
    record = tmp_path / "received.jsonl"
    config = load_config(guard_yaml(tmp_path, record))
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=open_store("memory://"), telemetry=hooks)
    host = Host()
    session = GuardSession(ctx, host)
    host.session = session
    try:
        await host.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                          "clientInfo": {"name": "test-host", "version": "1"}})
        await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": "unsampled"}})
        await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": "sampled"},
                                          "_meta": {"traceparent": TRACEPARENT}})
        hooks.flush()
        exported = list(spans.get_finished_spans())
        assert {format(s.context.trace_id, "032x") for s in exported} == {HOST_TRACE_ID}
        assert len([s for s in exported if s.name == "run_guardrail mcp-guard"]) == 1
        sent = [m for m in received(record) if m.get("method") == "tools/call"]
        assert sent[0]["params"]["_meta"]["traceparent"].endswith("-00")
        assert sent[1]["params"]["_meta"]["traceparent"].startswith(f"00-{HOST_TRACE_ID}-")
    finally:
        await session.close()
        hooks.shutdown()


async def test_a_shadow_policy_is_traced_and_audited_but_not_enforced(tmp_path: Path, exporter: Any) -> None:
    """``mode: shadow``: the guardrail span carries ``mcp_guard.shadow_decision``, the audit record
    ``shadow_decision``; the call itself is decided by the live policies alone."""
    from fixtures import write_policies

    record, audit_path = tmp_path / "received.jsonl", tmp_path / "audit.jsonl"
    path = guard_yaml(tmp_path, record)
    write_policies(tmp_path / "policies", [{"id": "trial", "mode": "shadow", "rules": [
        {"id": "no-echo", "effect": "deny", "tools": ["notes/echo"]}]}], name="trial")
    config = load_config(path)
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=open_store("memory://"),
                       audit=AuditLog(str(audit_path)), telemetry=exporter[2])
    host = Host()
    host.session = session = GuardSession(ctx, host)
    await host.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "test-host", "version": "1"}})
    try:
        answer = await host.request("tools/call", {"name": "notes_echo", "arguments": {"text": "hi"}})
        assert answer["result"]["isError"] is False  # enforced: the live policy allows it
    finally:
        await session.close()
    assert [m for m in received(record) if m.get("method") == "tools/call"]
    guard = attrs(one(finished(exporter), "run_guardrail mcp-guard"))
    assert guard["mcp_guard.decision"] == "allow"
    assert guard["mcp_guard.shadow_decision"] == "deny"
    audited = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert [(r["decision"], r["shadow_decision"], r["shadow_rule_ids"]) for r in audited] == [("allow", "deny", ["trial#no-echo"])]
