"""A record's span written from cached blocks (``telemetry.wire``) is byte for byte the span its
``light()`` gives through ``SpanEncoder``, and parses to what the SDK's encoder writes: over
generated principals, verdicts, outcomes and ids (non-ASCII, empty, large, negative), with one
encoder kept across all examples, so a key that missed anything would serve a stale block."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
from harness import HOST_TRACE_ID, TRACEPARENT, clean_env, guard_yaml, raw_guard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_guard import telemetry
from mcp_guard.decision import Outcome, Verdict
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era
from mcp_guard.kinds import Kind
from mcp_guard.request import RequestContext, Target
from mcp_guard.telemetry.export import SpanEncoder
from mcp_guard.telemetry.hooks import Telemetry
from mcp_guard.telemetry.settings import Settings
from mcp_guard.telemetry.wire import RecordEncoder
from tests.telemetry.test_otlp import _sorted_attributes

HOOKS = telemetry.start(Settings(schedule_delay=3600), span_exporter=InMemorySpanExporter())
assert isinstance(HOOKS, Telemetry)
RECORDER = HOOKS.recorder
ENCODER = RecordEncoder(RECORDER.resource, RECORDER.scope)  # kept across examples: its caches must never mislead

text = st.text(max_size=40)
short = st.text(max_size=6)  # few distinct values: the same keys come back across examples
long_text = st.text(min_size=90, max_size=200)  # around the longest JSON-RPC id whose head is kept per length
ids = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), text, long_text, st.none())
counts = st.integers(min_value=0, max_value=2**63 - 1)


class Up:
    def __init__(self, name: str, url: str | None) -> None:
        self.name = name
        self.protocol_version = "2025-11-25"
        self.config = type("Config", (), {"url": url})()


principals = st.builds(Principal, short, st.lists(short, max_size=3).map(tuple), st.one_of(st.none(), short),
                       st.booleans(), st.one_of(st.none(), short))
verdicts = st.builds(Verdict, st.sampled_from(list(Outcome)), short, st.lists(short, max_size=2).map(tuple),
                     st.lists(short, max_size=2).map(tuple), st.one_of(st.none(), short))
answers = st.one_of(
    st.just({"result": {"content": []}}),
    st.just({"result": {"isError": True}}),
    st.builds(lambda code, message: {"error": {"code": code, "message": message}},
              st.integers(min_value=-(2**40), max_value=2**40), text),
)
calls = st.fixed_dictionaries({
    "who": principals, "verdict": verdicts, "shadow": st.one_of(st.none(), verdicts),
    "labels": st.one_of(st.none(), st.frozensets(short, max_size=3)),
    "method": st.sampled_from(["tools/call", "prompts/get", "resources/read", "tools/list", "initialize"]),
    "name": st.one_of(short, st.none(), st.integers()), "uri": st.one_of(text, st.none()),
    "id": ids, "upstream_id": st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    "session": st.one_of(st.none(), short), "era": st.sampled_from([Era.LEGACY, Era.MODERN]),
    "listed": st.one_of(st.none(), st.tuples(counts, counts)),
    "kind": st.sampled_from(list(Kind)), "upstream": st.sampled_from(["notes", "ünï", ""]),
    "url": st.sampled_from([None, "http://127.0.0.1:8443/mcp", "https://example.com/mcp"]),
    "answer": answers, "upstream_answer": answers, "failure": st.one_of(st.none(), text),
    "decide": st.booleans(),
    "meta": st.sampled_from([None, {"traceparent": TRACEPARENT}, {"traceparent": TRACEPARENT, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
                             {"traceparent": TRACEPARENT[:-2] + "00"}]),  # a host's context: remote parent, state, unsampled
})


def run(call: dict[str, Any]) -> list[Any]:
    """The records one host request leaves (SERVER, decision when ``decide``, CLIENT)."""
    found: list[Any] = []
    RECORDER.end = found.append
    params: dict[str, Any] = {"name": call["name"], "uri": call["uri"]}
    if call.get("meta"):
        params["_meta"] = call["meta"]
    message = {"jsonrpc": "2.0", "id": call["id"], "method": call["method"], "params": params}
    req = RequestContext(call["session"] or "s", call["who"], None, call["era"], "2025-11-25", message, {}, {})
    req.tools_listed = call["listed"]
    with HOOKS.request(req) as traced:
        if call["decide"]:
            req.target = Target("t", call["upstream"], "t", f"{call['upstream']}/t", {}, None, kind=call["kind"])
            with HOOKS.decision(req):
                req.verdict, req.shadow, req.session_labels = call["verdict"], call["shadow"], call["labels"]
        try:
            with HOOKS.upstream_call(Up(call["upstream"], call["url"]), call["method"], params) as up:
                noted = up.noting(None)
                if call["upstream_id"] is not None and noted is not None:
                    noted(call["upstream_id"])
                up.respond(call["upstream_answer"])
                if call["failure"] is not None:
                    raise RuntimeError(call["failure"])
        except RuntimeError:
            pass
        traced.respond(call["answer"])
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(calls, min_size=1, max_size=3), st.booleans())
def test_the_wire_bytes_are_the_light_spans_bytes(batch: list[dict[str, Any]], interleaved: bool) -> None:
    records = [r for call in batch for _ in range(2) for r in run(call)]  # each twice: once learned, once cached
    if interleaved:  # requests' spans mixed, as concurrent requests end: the trace id's bytes kept for one in a row must not leak
        records = records[::2] + records[1::2]
    if not records:  # every call unsampled: nothing is exported
        return
    ours = ENCODER.records(records)
    reference = SpanEncoder(RECORDER.resource, RECORDER.scope)
    light = [r.light() for r in records]
    assert ours == reference.request(light)
    sdk = encode_spans([s.readable(RECORDER.resource, RECORDER.scope) for s in light])
    assert _sorted_attributes(ExportTraceServiceRequest.FromString(ours)) == _sorted_attributes(sdk)


def test_a_repeated_call_is_served_from_one_learned_block() -> None:
    call = {"who": Principal("ålice", ("planner",), "triage", True, "g-1"),
            "verdict": Verdict(Outcome.ALLOW, "allowed", ("p",), ("r",)), "shadow": None, "labels": None,
            "method": "tools/call", "name": "t", "uri": None, "id": 1, "upstream_id": 9, "session": "s",
            "era": Era.LEGACY, "listed": None, "kind": Kind.TOOL, "upstream": "notes", "url": None,
            "answer": {"result": {}}, "upstream_answer": {"result": {}}, "failure": None, "decide": True}
    encoder = RecordEncoder(RECORDER.resource, RECORDER.scope)
    encoder.records(run(call))
    learned = dict(encoder._wired)
    assert len(learned) == 3
    second = run({**call, "id": 2, "upstream_id": 10})
    assert encoder.records(second) == SpanEncoder(RECORDER.resource, RECORDER.scope).request([r.light() for r in second])
    assert encoder._wired == learned  # nothing new learned: the same three keys


def test_a_long_batch_hands_the_gil_over_every_few_spans_and_writes_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_guard.telemetry import wire

    pauses: list[float] = []
    monkeypatch.setattr(wire, "_pause", pauses.append)
    call = {"who": Principal("a"), "verdict": Verdict(Outcome.ALLOW, "allowed", ("p",), ("r",)), "shadow": None,
            "labels": None, "method": "tools/call", "name": "t", "uri": None, "upstream_id": 5, "session": None,
            "era": Era.MODERN, "listed": None, "kind": Kind.TOOL, "upstream": "notes", "url": None,
            "answer": {"result": {}}, "upstream_answer": {"result": {}}, "failure": None, "decide": True}
    records = [r for i in range(50) for r in run({**call, "id": i})]
    assert len(records) == 150
    ours = RecordEncoder(RECORDER.resource, RECORDER.scope).records(records)
    assert ours == SpanEncoder(RECORDER.resource, RECORDER.scope).request([r.light() for r in records])
    assert pauses == [0, 0]  # before the 64th and the 128th span


def test_an_unhashable_value_falls_back_to_the_light_path() -> None:
    call_records = run({"who": Principal("a"), "verdict": Verdict(Outcome.DENY, "no", ["p"], ["r"]),  # type: ignore[arg-type]
                        "shadow": None, "labels": None, "method": "tools/call", "name": "t", "uri": None, "id": 3,
                        "upstream_id": None, "session": None, "era": Era.MODERN, "listed": None, "kind": Kind.TOOL,
                        "upstream": "notes", "url": None, "answer": {"result": {}}, "upstream_answer": {"result": {}},
                        "failure": None, "decide": True})
    encoder = RecordEncoder(RECORDER.resource, RECORDER.scope)
    assert encoder.records(call_records) == SpanEncoder(RECORDER.resource, RECORDER.scope).request(
        [r.light() for r in call_records])


@pytest.mark.e2e
async def test_a_real_guard_posts_the_spans_of_every_call_to_a_collector(tmp_path: Path) -> None:
    """``mcp-guard run`` exporting OTLP/HTTP to a receiver on loopback: every call's three spans
    (two for a refused one) arrive parsed by the official classes, linked and with their own ids;
    the repeated calls' spans (served from the cached blocks) carry the first one's attributes."""
    bodies: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/v1/traces":
                bodies.append(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
                    OTEL_METRICS_EXPORTER="none", OTEL_SERVICE_NAME="mcp-guard-wire")
    try:
        async with raw_guard(guard_yaml(tmp_path, tmp_path / "received.jsonl"), env, tmp_path / "guard.log") as host:
            await host.initialize()
            for i in range(3):
                assert (await host.call("notes_echo", {"text": f"ünï {i}"}))["result"]["isError"] is False
            assert (await host.call("notes_echo", {"text": "x"}, {"traceparent": TRACEPARENT}))["result"]["isError"] is False
            refused = await host.call("notes_write_note", {"path": "/etc/passwd", "text": "x"})
            assert refused["result"]["isError"] is True
    finally:
        server.shutdown()
    spans = [s for body in bodies for rs in ExportTraceServiceRequest.FromString(body).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    values = {kv.key: kv.value.string_value for rs in ExportTraceServiceRequest.FromString(bodies[0]).resource_spans
              for kv in rs.resource.attributes}
    assert values["service.name"] == "mcp-guard-wire"
    servers = [s for s in spans if s.kind == 2 and s.name.startswith("tools/call notes_")]
    assert len(servers) == 5 and len({s.trace_id for s in servers}) == 5
    assert servers[3].trace_id.hex() == HOST_TRACE_ID and servers[3].flags == 0x300  # the host's remote parent
    for server_span in servers:
        children = [s for s in spans if s.parent_span_id == server_span.span_id]
        kinds = sorted(s.kind for s in children)
        assert kinds == ([1] if server_span.name.endswith("write_note") else [1, 3])
        assert all(s.trace_id == server_span.trace_id for s in children)

    def attrs(span: Any) -> dict[str, Any]:
        return {kv.key: str(kv.value) for kv in span.attributes if kv.key != "jsonrpc.request.id"}

    echo = [s for s in servers if s.name == "tools/call notes_echo"]
    assert attrs(echo[0]) == attrs(echo[1]) == attrs(echo[2])
    assert len({next(kv.value.string_value for kv in s.attributes if kv.key == "jsonrpc.request.id") for s in echo}) == 4
    denied = next(s for s in spans if s.kind == 1 and s.parent_span_id == servers[4].span_id)
    assert {kv.key: kv.value.string_value for kv in denied.attributes}["mcp_guard.decision"] == "deny"


def test_a_span_longer_than_the_kept_heads_is_framed_by_its_own_length() -> None:
    call = {"who": Principal("a"), "verdict": Verdict(Outcome.ALLOW, "allowed", ("p",), ("r",)), "shadow": None,
            "labels": None, "method": "resources/read", "name": None, "uri": "u" * 20_000, "id": "x" * 300,
            "upstream_id": 5, "session": None, "era": Era.MODERN, "listed": None, "kind": Kind.RESOURCE,
            "upstream": "notes", "url": None, "answer": {"result": {}}, "upstream_answer": {"result": {}},
            "failure": None, "decide": True}
    records = run(call) + run({**call, "uri": "short", "id": 1})
    assert ENCODER.records(records) == SpanEncoder(RECORDER.resource, RECORDER.scope).request([r.light() for r in records])
