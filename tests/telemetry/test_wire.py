"""A record's span written from cached blocks (``telemetry.wire``) is byte for byte the span its
``light()`` gives through ``SpanEncoder``, and parses to what the SDK's encoder writes: over
generated principals, verdicts, outcomes and ids (non-ASCII, empty, large, negative), with one
encoder kept across all examples, so a key that missed anything would serve a stale block."""

from __future__ import annotations

from typing import Any

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
ids = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), text, st.none())
counts = st.integers(min_value=0, max_value=2**63 - 1)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


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
@given(st.lists(calls, min_size=1, max_size=3))
def test_the_wire_bytes_are_the_light_spans_bytes(batch: list[dict[str, Any]]) -> None:
    records = [r for call in batch for _ in range(2) for r in run(call)]  # each twice: once learned, once cached
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


def test_an_unhashable_value_falls_back_to_the_light_path() -> None:
    call_records = run({"who": Principal("a"), "verdict": Verdict(Outcome.DENY, "no", ["p"], ["r"]),  # type: ignore[arg-type]
                        "shadow": None, "labels": None, "method": "tools/call", "name": "t", "uri": None, "id": 3,
                        "upstream_id": None, "session": None, "era": Era.MODERN, "listed": None, "kind": Kind.TOOL,
                        "upstream": "notes", "url": None, "answer": {"result": {}}, "upstream_answer": {"result": {}},
                        "failure": None, "decide": True})
    encoder = RecordEncoder(RECORDER.resource, RECORDER.scope)
    assert encoder.records(call_records) == SpanEncoder(RECORDER.resource, RECORDER.scope).request(
        [r.light() for r in call_records])
