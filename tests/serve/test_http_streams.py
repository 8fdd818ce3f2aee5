"""The per-request stream of ``serve`` in memory: a slow reader's backlog is bounded, a question
that cannot be queued is answered at once, and the accept header decides JSON or SSE."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard.jsonrpc import RELATED_REQUEST
from mcp_guard.serve.reply_host import ReplyHost
from mcp_guard.serve.streams import MAX_QUEUED, accepts_sse


class Session:
    def __init__(self) -> None:
        self.handled: list[dict[str, Any]] = []

    async def handle(self, message: Any) -> None:
        self.handled.append(message)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("accept", "expected"), [
    ("application/json", (False, False)),
    ("application/json, text/event-stream", (True, False)),
    ("text/event-stream, application/json", (True, True)),
    ("text/event-stream", (True, True)),
    ("text/event-stream;q=0.9, */*", (True, True)),
    ("", (False, False)),
])
def test_accept_decides_json_or_sse(accept: str, expected: tuple[bool, bool]) -> None:
    assert accepts_sse(accept) == expected


async def test_a_slow_readers_backlog_is_bounded_and_questions_are_refused_not_queued() -> None:
    host, session = ReplyHost(), Session()
    host.session = session
    inner, stream = host.open({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"_meta": {"progressToken": "t"}}}, True)
    for i in range(MAX_QUEUED + 10):  # nobody reads
        await host.send({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": i}})
    assert stream.events is not None and stream.events.qsize() == MAX_QUEUED
    token = RELATED_REQUEST.set(inner)
    try:
        await host.send({"jsonrpc": "2.0", "id": 5, "method": "roots/list"})
    finally:
        RELATED_REQUEST.reset(token)
    assert session.handled[-1]["id"] == 5 and "no open stream" in session.handled[-1]["error"]["message"]
    assert not host.answered({"jsonrpc": "2.0", "id": 5, "result": {}})  # never asked: a posted answer is refused


async def test_a_closed_stream_answers_its_open_questions_and_cancels_its_request() -> None:
    host, session = ReplyHost(), Session()
    host.session = session
    inner, stream = host.open({"jsonrpc": "2.0", "id": "a", "method": "tools/call"}, True)
    token = RELATED_REQUEST.set(inner)
    try:
        await host.send({"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {}})
    finally:
        RELATED_REQUEST.reset(token)
    await host.finish("a", inner, stream, cancel=True)
    assert [m.get("id") for m in session.handled if "error" in m] == [7]
    assert session.handled[-1] == {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                   "params": {"requestId": inner, "reason": "the caller closed the stream"}}
    assert not host.answered({"jsonrpc": "2.0", "id": 7, "result": {}})
