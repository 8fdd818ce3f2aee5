"""Telemetry off the event loop: a call's scopes leave records in the queues, and the attribute
sets, spans and metric points are made from them on the export threads only."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from harness import StubUpstream, in_memory_telemetry
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mcp_guard import telemetry
from mcp_guard.decision import Outcome, Verdict
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era
from mcp_guard.request import RequestContext, Target
from mcp_guard.telemetry.hooks import Telemetry
from mcp_guard.telemetry.records import SpanRecord
from mcp_guard.telemetry.settings import Settings

WHO = Principal("alice@example.com", ("planner", "coder"), "triage", True, "g-1")
TARGET = Target("notes_echo", "notes", "echo", "notes/echo", {"name": "notes_echo"}, None)
BIG = "x" * 1_000_000


@pytest.fixture
def tel() -> Iterator[tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader]]:
    with in_memory_telemetry(Settings(schedule_delay=3600)) as started:
        yield started


def call(hooks: Telemetry, rid: int, answer: dict[str, Any], upstream_answer: dict[str, Any] | None = None) -> RequestContext:
    message = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
               "params": {"name": "notes_echo", "arguments": {"text": BIG}}}
    req = RequestContext("s-1", WHO, None, Era.LEGACY, "2025-11-25", message, {}, {})
    with hooks.request(req) as traced:
        req.target = TARGET
        with hooks.decision(req):
            req.verdict = Verdict(Outcome.ALLOW, "allowed by rule echo", ("notes-policy",), ("echo",))
        with hooks.upstream_call(StubUpstream(), "tools/call", {"name": "echo", "arguments": {"text": BIG}}) as up:
            sent = up.inject({"name": "echo"})
            assert sent is not None and sent["_meta"]["traceparent"].startswith(f"00-{req.trace[0]:032x}-")  # type: ignore[index]
            noted = up.noting(None)
            assert noted is not None
            noted(41)
            up.respond(upstream_answer or answer)
        traced.respond(answer)
    return req


def test_the_loop_only_appends_records_and_the_export_side_builds_the_spans(tel: Any) -> None:
    hooks, exporter, reader = tel
    recorder = hooks.recorder
    built_on: set[str] = set()
    server_start = recorder.server_start

    def watched(*args: Any) -> Any:
        built_on.add(threading.current_thread().name)
        return server_start(*args)

    recorder.server_start = watched
    req = call(hooks, 7, {"jsonrpc": "2.0", "id": 7, "result": {"content": [], "isError": False}})

    queued = list(recorder.processor._queue)
    assert [type(r).__name__ for r in queued] == ["DecisionSpan", "UpstreamCall", "RequestTrace"]
    assert all(isinstance(r, SpanRecord) for r in queued)
    # no attribute set was built on the loop, and no record holds the request (nor its arguments)
    assert built_on == set()
    assert not recorder._server_end and not recorder._client_base and not recorder._guardrail_base and not recorder._merged
    assert all(not hasattr(r, "req") for r in queued)
    for instrument in (recorder.server_duration, recorder.client_duration, recorder.decisions):
        assert [entry[2] for entry in instrument.pending] == [None]  # a record: key and attributes come later

    done = threading.Event()
    thread = threading.Thread(target=lambda: (hooks.flush(), done.set()), name="export-side")
    thread.start()
    thread.join(30)
    assert done.is_set() and built_on == {"export-side"}

    spans = {s.kind: s for s in exporter.get_finished_spans()}
    server, guard, client = spans[SpanKind.SERVER], spans[SpanKind.INTERNAL], spans[SpanKind.CLIENT]
    assert (server.context.trace_id, guard.context.span_id) == req.trace
    assert guard.parent.span_id == server.context.span_id and client.parent.span_id == server.context.span_id
    assert server.name == "tools/call notes_echo" and client.name == "tools/call echo"
    assert server.attributes["jsonrpc.request.id"] == "7" and client.attributes["jsonrpc.request.id"] == "41"
    assert server.attributes["mcp.session.id"] == "s-1" and server.attributes["mcp_guard.decision"] == "allow"
    assert client.attributes["mcp_guard.decision"] == "allow" and client.attributes["mcp_guard.upstream"] == "notes"
    assert guard.attributes["gen_ai.guardrail.verdict.type"] == "allow"
    assert guard.attributes["mcp_guard.principal.chain"] == ("user:alice@example.com", "agent:planner", "agent:coder")
    assert BIG not in repr([dict(s.attributes) for s in (server, guard, client)])

    data = reader.get_metrics_data()
    names = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names["mcp_guard.decisions"].data.data_points[0].attributes["gen_ai.tool.name"] == "notes_echo"
    assert names["mcp.client.operation.duration"].data.data_points[0].attributes["mcp_guard.upstream"] == "notes"
    assert names["mcp.server.operation.duration"].data.data_points[0].count == 1


def test_errors_and_exceptions_are_noted_on_the_loop_and_marked_on_the_spans(tel: Any) -> None:
    hooks, exporter, _ = tel
    call(hooks, 1, {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad"}},
         {"jsonrpc": "2.0", "id": 1, "result": {"isError": True}})
    req = RequestContext("s-1", WHO, None, Era.LEGACY, "2025-11-25", {"id": 2, "method": "tools/call"}, {}, {})
    with hooks.request(req):
        req.target = TARGET
        with pytest.raises(RuntimeError), hooks.decision(req):
            raise RuntimeError("policy store gone")
    with pytest.raises(TimeoutError), hooks.upstream_call(StubUpstream(), "tools/list", None):
        raise TimeoutError
    hooks.flush()
    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.name == "tools/call notes_echo")
    assert server.status.status_code is StatusCode.ERROR and server.status.description == "bad"
    assert server.attributes["error.type"] == "-32602" and server.attributes["rpc.response.status_code"] == "-32602"
    client = next(s for s in spans if s.name == "tools/call echo")
    assert client.attributes["error.type"] == "tool_error"
    failed = next(s for s in spans if s.kind is SpanKind.INTERNAL and s.events)
    assert failed.status.description == "RuntimeError: policy store gone"
    assert failed.events[0].attributes["exception.message"] == "policy store gone"
    listed = next(s for s in spans if s.name == "tools/list")
    assert listed.attributes["error.type"] == "TimeoutError" and listed.parent is None


def test_a_record_that_cannot_be_built_is_dropped_and_counted_never_raised_on_the_loop(tel: Any) -> None:
    hooks, exporter, _ = tel
    req = RequestContext("s-1", WHO, None, Era.LEGACY, "2025-11-25", {"id": 3, "method": "tools/call"}, {}, {})
    with hooks.request(req):
        pass
    req.principal = None  # type: ignore[assignment]  # a record noted what it needs when the scope ended
    bad = RequestContext("s-1", None, None, Era.LEGACY, "2025-11-25", {"id": 4, "method": "tools/call"}, {}, {})  # type: ignore[arg-type]
    with hooks.request(bad):  # no principal: its SERVER span cannot be built
        pass
    processor = hooks.recorder.processor
    hooks.flush()
    assert processor.failed == 2 and exporter.get_finished_spans() == ()  # the batch held the unbuildable one


@pytest.mark.parametrize(("name", "arg", "sampled"), [("parentbased_traceidratio", "0", False), ("traceidratio", "1", True),
                                                      ("always_off", "", False), ("always_on", "", True)])
def test_a_configured_sampler_decides_a_requests_first_span_and_the_rest_follow(name: str, arg: str, sampled: bool) -> None:
    """The spans under the request's own span take its decision (what the SDK's samplers answer
    for a local parent) without asking the sampler again; an unsampled call queues no record."""
    hooks = telemetry.start(Settings(schedule_delay=3600, sampler=name, sampler_arg=arg), span_exporter=InMemorySpanExporter())
    assert isinstance(hooks, Telemetry)
    recorder = hooks.recorder
    asked: list[str] = []
    sample = recorder.sample

    def counted(span_name: str, *args: Any) -> Any:
        asked.append(span_name)
        return sample(span_name, *args)

    recorder.sample = counted  # type: ignore[method-assign]
    try:
        req = call(hooks, 5, {"jsonrpc": "2.0", "id": 5, "result": {"content": [], "isError": False}})
        assert asked == ["tools/call notes_echo"]  # the SERVER span's only
        queued = list(recorder.processor._queue)  # type: ignore[union-attr]
        assert len(queued) == (3 if sampled else 0)
        assert all(r.sampled is sampled and r.trace_id == req.trace[0] for r in queued)  # type: ignore[index]
    finally:
        hooks.shutdown()


def test_decisions_on_two_resources_count_in_one_point_without_their_uris(tel: Any) -> None:
    """``mcp_guard.decisions`` never names a resource URI, so two URIs of one upstream make one
    data point (not two points with the same attributes)."""
    hooks, _, reader = tel
    from mcp_guard.kinds import Kind

    for rid, uri in ((1, "file:///a"), (2, "file:///b")):
        req = RequestContext("s-1", WHO, None, Era.LEGACY, "2025-11-25",
                             {"id": rid, "method": "resources/read", "params": {"uri": uri}}, {}, {})
        with hooks.request(req):
            req.target = Target(uri, "notes", uri, f"notes/{uri}", {}, None, kind=Kind.RESOURCE)
            with hooks.decision(req):
                req.verdict = Verdict(Outcome.ALLOW, "allowed", ("notes-policy",), ("read",))
    data = reader.get_metrics_data()
    (decisions,) = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                    if m.name == "mcp_guard.decisions"]
    assert [(dict(p.attributes), p.value) for p in decisions.data.data_points] == [
        ({"mcp_guard.decision": "allow", "mcp_guard.upstream": "notes"}, 2)]


def test_a_number_stands_for_one_set_of_parts_even_after_its_table_is_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_guard.telemetry import recorder

    hooks = telemetry.start(Settings(schedule_delay=3600), span_exporter=InMemorySpanExporter())
    assert isinstance(hooks, Telemetry)
    rec = hooks.recorder
    first = rec.number(("alice", ("planner",)))
    assert rec.number(("alice", ("planner",))) == first != rec.number(("bob", ("planner",)))
    monkeypatch.setattr(recorder, "CACHE_LIMIT", 2)
    rec.number(("carol",))  # the table is full: cleared, and every number after it is new
    assert rec.number(("alice", ("planner",))) not in (first, rec.number(("bob", ("planner",))))
    with pytest.raises(TypeError):
        rec.number((["a list"],))
    hooks.shutdown()
