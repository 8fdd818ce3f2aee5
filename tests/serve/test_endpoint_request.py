"""The MCP endpoint's request and answer: headers read once (the first of a repeated field wins, as
Starlette's ``Headers.get``), the body read from the ASGI messages with its limit, and the plain
JSON answer's head the same lines Starlette's ``Response`` makes."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response

from mcp_guard.config import ServeConfig
from mcp_guard.grants import ChainVerifier
from mcp_guard.serve.resource import McpRequest, ResourceServer
from mcp_guard.serve.streams import JsonAnswer


def request(headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]] | None = None) -> McpRequest:
    queue = list(messages or [])

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return McpRequest({"type": "http", "method": "POST", "path": "/mcp", "headers": headers}, receive)


def server(max_body: int = 10) -> ResourceServer:
    return ResourceServer(ChainVerifier({}, "urn:mcp-guard:local"), ServeConfig(max_body=max_body), frozenset(), None)


def test_headers_are_read_once_and_the_first_of_a_repeated_field_wins_as_in_starlette() -> None:
    raw = [(b"authorization", b"Bearer first"), (b"accept", b"application/json"), (b"authorization", b"Bearer second"),
           (b"mcp-session-id", b"s1")]
    req = request(raw)
    assert req.head == {k: Headers(raw=raw).get(k) for k in ("authorization", "accept", "mcp-session-id")}
    assert req.head["authorization"] == "Bearer first"
    assert req.head is req.head  # made once per request


async def test_the_body_is_joined_refused_past_the_limit_and_a_disconnect_is_400() -> None:
    parts = [{"type": "http.request", "body": b"{\"a\":", "more_body": True}, {"type": "http.request", "body": b"1}"}]
    assert await server().read_body(request([], parts)) == b'{"a":1}'
    too_big = [{"type": "http.request", "body": b"x" * 6, "more_body": True}, {"type": "http.request", "body": b"x" * 6,
                                                                                 "more_body": True}]
    refused = await server().read_body(request([], too_big))  # refused at the part that passes it: nothing more is read
    assert isinstance(refused, Response) and refused.status_code == 413
    declared = await server().read_body(request([(b"content-length", b"11")]))
    assert isinstance(declared, Response) and declared.status_code == 413
    gone = await server().read_body(request([], [{"type": "http.request", "body": b"{", "more_body": True},
                                                 {"type": "http.disconnect"}]))
    assert isinstance(gone, Response) and gone.status_code == 400


def test_a_json_answer_has_starlette_s_head() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    for status, headers in ((200, None), (200, {}), (404, {"Mcp-Session-Id": "abc"})):
        mine = JsonAnswer(body, status, headers)
        theirs = Response(body, status_code=status, media_type="application/json", headers=headers)
        assert (mine.status_code, mine.body, mine.raw_headers) == (theirs.status_code, theirs.body, theirs.raw_headers)
