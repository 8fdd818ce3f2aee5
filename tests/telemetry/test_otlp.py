"""The hand-written OTLP encoder: its bytes parse with the official ``opentelemetry.proto`` classes
and equal what the SDK's own encoder writes for the same spans."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode, TraceState

from mcp_guard.telemetry.export import SpanEncoder
from mcp_guard.telemetry.spans import LightSpan

RESOURCE = Resource.create({"service.name": "mcp-guard-test", "service.version": "0.1.0", "deployment.n": 3})
SCOPE = InstrumentationScope("mcp_guard", "0.1.0")
HOST_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736


def spans() -> list[LightSpan]:
    """A guarded call's three spans plus the odd cases: a root span, unicode, big and negative
    numbers, an error status, events, a remote parent with trace state."""
    state = TraceState([("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")])
    server = LightSpan("tools/call notes_echo", SpanKind.SERVER, HOST_TRACE, 0x1111111111111111, 0x00F067AA0BA902B7,
                       True, True, state, {
                           "mcp.method.name": "tools/call", "network.transport": "pipe",
                           "mcp_guard.principal.chain": ("user:alice@example.com", "agent:support-bot"),
                           "mcp_guard.delegation.depth": 1, "mcp_guard.principal.verified": False,
                       }, 1_764_000_000_000_000_000)
    server.unique["jsonrpc.request.id"] = "2"
    server.end = server.start + 1_234_567
    server.set_error("tool said no — ünïcode")
    guard = LightSpan("run_guardrail mcp-guard", SpanKind.INTERNAL, HOST_TRACE, 0x2222222222222222, server.span_id,
                      False, True, state, {
                          "gen_ai.operation.name": "run_guardrail", "mcp_guard.policy.ids": ("notes-policy",),
                          "mcp_guard.rule.ids": (), "big": 2**62, "negative": -5, "ratio": 0.25, "yes": True,
                      }, server.start + 10)
    guard.end = guard.start + 500
    guard.add_event("mcp_guard.approval.resolved", guard.end, {"mcp_guard.decision": "approved",
                                                               "mcp_guard.approver": "bob"})
    client = LightSpan("tools/call echo", SpanKind.CLIENT, HOST_TRACE, 0x3333333333333333, server.span_id, False, True,
                       state, {"mcp.method.name": "tools/call", "server.port": 8443, "empty": ""}, guard.end)
    client.end = client.start + 99
    client.set_error(None)
    root = LightSpan("tools/list", SpanKind.CLIENT, 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0, False,
                     True, None, {}, 1)
    root.end = 2
    return [server, guard, client, root]


def _sorted_attributes(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """The same request with each span's attributes in key order (their order carries no meaning)."""
    out = ExportTraceServiceRequest()
    out.CopyFrom(request)
    for rs in out.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                ordered = sorted(span.attributes, key=lambda kv: kv.key)
                copies = [type(kv)() for kv in ordered]
                for copy, kv in zip(copies, ordered, strict=True):
                    copy.CopyFrom(kv)
                del span.attributes[:]
                span.attributes.extend(copies)
    return out


def test_bytes_parse_and_equal_the_sdk_encoders_output() -> None:
    light = spans()
    encoder = SpanEncoder(RESOURCE, SCOPE)
    ours = encoder.request(light)
    sdk = encode_spans([s.readable(RESOURCE, SCOPE) for s in light])
    parsed = ExportTraceServiceRequest.FromString(ours)
    assert _sorted_attributes(parsed) == _sorted_attributes(sdk)
    # the cache serves the second batch from the same bytes
    assert encoder.request(light) == ours
    # without per-request attributes the order is the SDK's too: the same bytes
    for span in light:
        span.unique.clear()
    assert encoder.request(light) == encode_spans([s.readable(RESOURCE, SCOPE) for s in light]).SerializeToString()


def test_parsed_fields_are_what_the_span_said() -> None:
    light = spans()
    parsed = ExportTraceServiceRequest.FromString(SpanEncoder(RESOURCE, SCOPE).request(light))
    (rs,) = parsed.resource_spans
    assert {kv.key: kv.value.string_value or kv.value.int_value for kv in rs.resource.attributes}["service.name"] == "mcp-guard-test"
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version) == ("mcp_guard", "0.1.0")
    server, guard, client, root = ss.spans
    assert [kv.value.string_value for kv in server.attributes if kv.key == "jsonrpc.request.id"] == ["2"]
    assert server.trace_id.hex() == format(HOST_TRACE, "032x")
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    assert server.trace_state == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert server.flags == 0x300  # has-is-remote + is-remote
    assert server.kind == 2 and guard.kind == 1 and client.kind == 3
    assert server.status.code == StatusCode.ERROR.value and server.status.message == "tool said no — ünïcode"
    assert server.end_time_unix_nano - server.start_time_unix_nano == 1_234_567
    chain = next(kv for kv in server.attributes if kv.key == "mcp_guard.principal.chain")
    assert [v.string_value for v in chain.value.array_value.values] == ["user:alice@example.com", "agent:support-bot"]
    values = {kv.key: kv.value for kv in guard.attributes}
    assert values["negative"].int_value == -5 and values["big"].int_value == 2**62
    assert values["ratio"].double_value == 0.25 and values["yes"].bool_value is True
    assert guard.events[0].name == "mcp_guard.approval.resolved" and guard.flags == 0x100
    assert root.parent_span_id == b"" and root.status.code == 0


def test_a_stream_of_distinct_values_does_not_grow_the_cache_forever() -> None:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    span = spans()[3]
    for i in range(20_000):
        span.attrs = {"mcp_guard.tools.listed": i, "mcp.method.name": "tools/list"}
        encoder.request([span])
    assert encoder._cached <= 8192 and sum(len(v) for v in encoder._attr_cache.values()) <= 8192
    assert len(encoder._blocks) <= 1024
    assert len(encoder._by_id) <= 1024


@pytest.mark.parametrize("value", ["", "7", "x" * 127, "x" * 128, "é" * 70, "y" * 20_000, 5, True])
def test_per_span_values_match_the_sdk_encoder_at_every_length(value: object) -> None:
    """A per-span value (a JSON-RPC id, a resource URI) is framed inline; the bytes are the SDK's
    for short, long (multi-byte length) and non-ASCII values, and for a non-string value."""
    span = spans()[0]
    span.unique = {"jsonrpc.request.id": value, "mcp.resource.uri": value}
    ours = SpanEncoder(RESOURCE, SCOPE).request([span])
    sdk = encode_spans([span.readable(RESOURCE, SCOPE)]).SerializeToString()
    assert ours == sdk


def test_a_shared_attribute_set_is_encoded_once_and_found_by_identity() -> None:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    first, second = spans()[1], spans()[2]
    shared = dict(first.attrs)
    first.attrs = second.attrs = shared
    encoder.request([first])
    blocks = len(encoder._blocks)
    assert encoder.request([second]) == encode_spans([second.readable(RESOURCE, SCOPE)]).SerializeToString()
    assert len(encoder._blocks) == blocks  # the second span found the block by the dict's identity
