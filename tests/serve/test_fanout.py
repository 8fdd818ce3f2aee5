"""Session events between replicas over a real Redis: the approval page answered on one replica
tells the session that asked on another, and only that session."""

from __future__ import annotations

import asyncio
from typing import Any

from fixtures.replicas import fanout_replicas

from mcp_guard.serve.asgi import HttpGuard
from mcp_guard.serve.reply_host import ReplyHost
from mcp_guard.serve.streams import Stream
from mcp_guard.serve.table import SessionEntry


class _Quiet:
    id = "guard-session-1"
    key = "every-replica-name-1"

    async def handle(self, message: Any) -> None: ...
    async def close(self) -> None: ...


def hold_session(guard: HttpGuard) -> Stream:
    """A handshake-era session with its GET stream open on ``guard``."""
    host = ReplyHost()
    stream = Stream(True, answered=False)
    host.listener = stream
    entry = SessionEntry("sid:abc", _Quiet(), host, "grant:x", "user:alice", "root:alice", 0.0)
    guard.entries[entry.key] = entry
    guard.by_session_key[_Quiet.key] = entry
    return stream


async def next_event(stream: Stream, wait: float) -> Any:
    try:
        return await asyncio.wait_for(stream.queue().get(), wait)
    except TimeoutError:
        return None


async def test_an_answer_on_one_replica_reaches_the_stream_on_another(redis_url: str) -> None:
    async with fanout_replicas(redis_url) as (a, b):
        stream = hold_session(a)
        # answered on B for another session: A's caller hears nothing
        b._page_answered("11112222", {"session": "someone-else", "binding": "b1"})
        assert await next_event(stream, 1.0) is None
        # a queued (not page) request carries no binding: nobody was pointed at the page
        b._page_answered("33334444", {"session": _Quiet.key})
        assert await next_event(stream, 1.0) is None
        b._page_answered("deadbeef", {"session": _Quiet.key, "binding": "b2"})
        event = await next_event(stream, 10)
        assert event == {"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
                         "params": {"elicitationId": "deadbeef"}}
        assert await next_event(stream, 1.0) is None  # once, not once per replica


async def test_a_list_change_on_one_replica_reaches_the_get_stream_on_another(redis_url: str) -> None:
    async with fanout_replicas(redis_url) as (a, b):
        stream = hold_session(a)  # the GET stream is on A
        host = ReplyHost()  # B serves the same session, without a GET stream
        host.elsewhere = lambda message: b._notice_elsewhere("abc", message)
        await host.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        assert await next_event(stream, 10) == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {}}
        await host.send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///a"}})
        assert await next_event(stream, 10) == {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                                "params": {"uri": "file:///a"}}
        # only GET-stream notices travel: a log message of no request, or another session's notice, does not
        await host.send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}})
        b._notice_elsewhere("someone-else", {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        assert b.fanout is not None
        b.fanout.publish({"event": "notice", "session": "abc", "message": {"method": "sampling/createMessage", "id": 1}})
        assert await next_event(stream, 1.0) is None
