"""The scopes on the event loop: one draw of ids and one wall-clock read per request, later times
from the monotonic clock, the upstream told its CLIENT span, and records freed without the
cyclic garbage collector, and the metric records folded off the loop."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import StubUpstream, in_memory_telemetry
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mcp_guard.decision import Outcome, Verdict
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era
from mcp_guard.request import RequestContext, Target
from mcp_guard.telemetry import metrics, scopes
from mcp_guard.telemetry.hooks import Telemetry
from mcp_guard.telemetry.settings import Settings

WHO = Principal("alice@example.com", ("planner",), "triage", True, "g-1")
TARGET = Target("notes_echo", "notes", "echo", "notes/echo", {"name": "notes_echo"}, None)
ANSWER = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False}}


@pytest.fixture
def tel() -> Iterator[tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader]]:
    with in_memory_telemetry(Settings(schedule_delay=3600, max_queue_size=10_000)) as started:
        yield started


def call(hooks: Telemetry, rid: int, meta: dict[str, Any] | None = None) -> tuple[RequestContext, str]:
    """One guarded call's three scopes; returns the request and the traceparent the upstream was sent."""
    params: dict[str, Any] = {"name": "notes_echo", "arguments": {}}
    if meta is not None:
        params["_meta"] = meta
    req = RequestContext("s-1", WHO, None, Era.LEGACY, "2025-11-25",
                         {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}, {}, {})
    with hooks.request(req) as traced:
        req.target = TARGET
        with hooks.decision(req):
            req.verdict = Verdict(Outcome.ALLOW, "allowed", ("p",), ("r",))
        with hooks.upstream_call(StubUpstream(), "tools/call", {"name": "echo"}) as up:
            sent = up.inject({"name": "echo", "_meta": {"baggage": "secret=1"}})
            up.respond(ANSWER)
        traced.respond(ANSWER)
    assert sent is not None and "baggage" not in sent["_meta"]
    return req, sent["_meta"]["traceparent"]


def test_each_requests_spans_have_their_own_nonzero_ids_and_the_upstream_is_told_its_client_span(tel: Any) -> None:
    hooks, exporter, reader = tel
    sent = {}
    for rid in range(300):
        req, traceparent = call(hooks, rid)
        sent[req.trace[0]] = (req.trace, traceparent)  # type: ignore[index]
    hooks.flush()
    by_trace: dict[int, dict[SpanKind, Any]] = {}
    for span in exporter.get_finished_spans():
        by_trace.setdefault(span.context.trace_id, {})[span.kind] = span
    assert len(by_trace) == 300 and set(by_trace) == set(sent)
    every_span_id = [s.context.span_id for spans in by_trace.values() for s in spans.values()]
    assert len(set(every_span_id)) == 900 and 0 not in every_span_id and 0 not in by_trace
    for trace_id, spans in by_trace.items():
        server, guard, client = spans[SpanKind.SERVER], spans[SpanKind.INTERNAL], spans[SpanKind.CLIENT]
        assert server.parent is None and guard.parent.span_id == client.parent.span_id == server.context.span_id
        decided, traceparent = sent[trace_id]
        assert decided == (trace_id, guard.context.span_id)  # what the audit record carries
        assert traceparent == f"00-{trace_id:032x}-{client.context.span_id:016x}-01"
        # one clock: each span inside the one it is under, the decision before the upstream call
        assert server.start_time <= guard.start_time <= guard.end_time <= client.start_time <= client.end_time <= server.end_time
    data = reader.get_metrics_data()
    for metric in (m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics):
        if metric.name.endswith(".duration"):
            (point,) = metric.data.data_points
            assert point.count == 300 and point.min >= 0 and point.max < 60


def test_a_zero_draw_never_becomes_an_id(tel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks, exporter, _ = tel
    monkeypatch.setattr(scopes, "_getrandbits", lambda bits: 0)
    req, traceparent = call(hooks, 1)
    hooks.flush()
    spans = exporter.get_finished_spans()
    assert len(spans) == 3 and all(s.context.trace_id == req.trace[0] != 0 for s in spans)  # type: ignore[index]
    assert all(s.context.span_id != 0 for s in spans) and not traceparent.startswith("00-" + "0" * 32)


def test_a_hosts_trace_context_is_continued_and_its_state_passed_on(tel: Any) -> None:
    hooks, exporter, _ = tel
    host_trace, host_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    req, traceparent = call(hooks, 1, {"traceparent": f"00-{host_trace}-{host_span}-01", "tracestate": "rojo=1"})
    hooks.flush()
    spans = {s.kind: s for s in exporter.get_finished_spans()}
    server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert server.parent.span_id == int(host_span, 16) and server.parent.is_remote
    assert traceparent == f"00-{host_trace}-{client.context.span_id:016x}-01"
    assert req.trace[0] == int(host_trace, 16)  # type: ignore[index]


def test_a_calls_records_are_freed_by_reference_counting_not_left_to_the_collector(tel: Any) -> None:
    """A record holds no cycle (the request's span as its own current span, the decision's link
    back to it, the context variable's token): once exported and counted it is freed at once, so
    a busy guard leaves the cyclic collector nothing to find."""
    hooks, _, _ = tel
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for rid in range(50):
            call(hooks, rid)
        req = RequestContext("s-1", WHO, None, Era.LEGACY, "2025-11-25", {"id": 99, "method": "tools/call"}, {}, {})
        with pytest.raises(RuntimeError), hooks.request(req):
            req.target = TARGET
            with hooks.decision(req):
                raise RuntimeError("policy store gone")
        hooks.flush()
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, (scopes.RequestTrace, scopes.DecisionSpan, scopes.UpstreamCall))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


def test_under_sustained_traffic_the_metric_records_are_folded_off_the_loop(tel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader collects once a minute: a busy guard's queues reach ``WAKE_AT`` long before, and
    the fold thread folds them; the loop folds a queue only past ``FOLD_AT`` (the fold thread
    fell behind), so memory stays bounded either way."""
    hooks, _, reader = tel
    instruments = hooks.recorder.metrics
    folded_on: set[str] = set()
    for instrument in (*instruments.histograms, *instruments.counters):
        fold = instrument._fold_locked

        def watched(fold: Any = fold) -> None:
            folded_on.add(threading.current_thread().name)
            fold()

        monkeypatch.setattr(instrument, "_fold_locked", watched)
    for rid in range(3 * metrics.WAKE_AT):
        call(hooks, rid)
    deadline = time.monotonic() + 30
    while any(len(i.pending) >= metrics.WAKE_AT for i in instruments.histograms) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert folded_on == {"mcp-guard-metric-fold"}
    assert all(len(i.pending) < metrics.WAKE_AT for i in (*instruments.histograms, *instruments.counters))

    instruments._stopped = True  # the fold thread gone: the loop keeps the queues bounded itself
    instruments.wake.set()
    instruments._folder.join(5)
    monkeypatch.setattr(metrics, "FOLD_AT", metrics.WAKE_AT + 10)
    for rid in range(3 * metrics.WAKE_AT):
        call(hooks, rid)
    assert threading.current_thread().name in folded_on
    assert all(len(i.pending) <= metrics.WAKE_AT + 10 for i in (*instruments.histograms, *instruments.counters))
    data = reader.get_metrics_data()
    (decisions,) = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                    if m.name == "mcp_guard.decisions"]
    assert sum(p.value for p in decisions.data.data_points) == 6 * metrics.WAKE_AT
