"""The HTTP upstream channel against a scripted upstream on a real loopback socket.

The scripted server speaks plain HTTP/1.1 (keep-alive, Content-Length or chunked, SSE) and
answers each ``tools/call`` the way its tool name says: well, or the ways a broken or hostile
upstream can answer (malformed events, a body over the limit, a stream that hangs or ends
unanswered, the wrong content type, ids that collide with the guard's own, an expired session).
Every one must end as a one-sentence error for that call, never a hang or a dead guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mcp_guard.config import UpstreamConfig, upstream_proxied
from mcp_guard.errors import UpstreamError
from mcp_guard.jsonrpc import Message, result
from mcp_guard.upstreams import http as http_channel
from mcp_guard.upstreams.connection import Upstream
from mcp_guard.upstreams.http import SseError, sse_events

TOOLS = ["json", "chunked", "sse", "collide", "malformed_sse", "giant", "giant_sse", "giant_chunk", "hang", "wrong_type",
         "status500", "rpc_error_400", "unanswered", "expire", "not_rpc", "bad_chunk", "drop_next"]


@dataclass
class Script:
    """What the scripted upstream saw."""

    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)  # (method, headers, body)
    cancelled_posts: int = 0
    dropped: int = 0
    sessions: int = 0
    get_streams: int = 0
    push: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    def methods(self) -> list[str]:
        return [b.get("method", "<answer>") if isinstance(b, dict) else m for m, _, b in self.requests]


def sse(*messages: Any) -> bytes:
    return b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n" for m in messages)


def head(status: int, ctype: str | None, length: int | None, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    else:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@contextlib.asynccontextmanager
async def scripted_upstream(modern: bool = False) -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        drop_next = False
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                if drop_next:  # the keep-alive race: this connection closes as the next request arrives
                    script.dropped += 1
                    return
                lines = raw.decode().split("\r\n")
                method = lines[0].split(" ")[0]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0"))
                body = json.loads(await reader.readexactly(length)) if length else None
                script.requests.append((method, headers, body))
                if method == "GET":
                    script.get_streams += 1
                    writer.write(head(200, "text/event-stream", None))
                    while True:
                        writer.write(chunk(await script.push.get()))
                        await writer.drain()
                if method == "DELETE":
                    writer.write(head(200, None, 0))
                    continue
                await answer(body, headers, writer)
                await writer.drain()
                drop_next = isinstance(body, dict) and (body.get("params") or {}).get("name") == "drop_next"
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def answer(body: Any, headers: dict[str, str], writer: asyncio.StreamWriter) -> None:
        if "method" not in body or "id" not in body:  # a notification or an answer to our request
            writer.write(head(202, None, 0))
            return
        rid, method, params = body["id"], body["method"], body.get("params") or {}
        if method == "initialize":
            script.sessions += 1
            data = json.dumps(result(rid, {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                           "serverInfo": {"name": "scripted", "version": "1"}})).encode()
            writer.write(head(200, "application/json", len(data), {"Mcp-Session-Id": f"s{script.sessions}"}) + data)
            return
        if method == "server/discover":
            if not modern:
                data = json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}).encode()
                writer.write(head(400, "application/json", len(data)) + data)
                return
            data = json.dumps(result(rid, {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}})).encode()
            writer.write(head(200, "application/json", len(data)) + data)
            return
        if method == "tools/list":
            data = json.dumps(result(rid, {"tools": [{"name": t, "inputSchema": {"type": "object"}} for t in TOOLS]})).encode()
            writer.write(head(200, "application/json", len(data)) + data)
            return
        tool = params.get("name")
        ok = result(rid, {"content": [{"type": "text", "text": f"{tool} ok"}], "isError": False})
        if tool == "json":
            data = json.dumps(ok).encode()
            writer.write(head(200, "application/json", len(data)) + data)
        elif tool == "chunked":
            data = json.dumps(ok).encode()
            writer.write(head(200, "application/json", None) + chunk(data[:10]) + chunk(data[10:]) + b"0\r\n\r\n")
        elif tool == "sse":
            data = sse({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}, ok)
            writer.write(head(200, "text/event-stream", None) + chunk(b": keep-alive\n\n") + chunk(data[:7]) + chunk(data[7:]) + b"0\r\n\r\n")
        elif tool == "collide":  # a request to the guard with the guard's own id, then the answer under a foreign id
            data = sse({"jsonrpc": "2.0", "id": rid, "method": "roots/list"},
                       {**ok, "id": 424242, "result": {"content": [{"type": "text", "text": "mine"}]}})
            writer.write(head(200, "text/event-stream", len(data)) + data)
        elif tool == "malformed_sse":
            data = b"event: message\ndata: {not json\n\n"
            writer.write(head(200, "text/event-stream", len(data)) + data)
        elif tool == "giant":
            data = json.dumps({**ok, "result": {"content": [{"type": "text", "text": "x" * 5000}]}}).encode()
            writer.write(head(200, "application/json", len(data)) + data)
        elif tool == "giant_sse":
            writer.write(head(200, "text/event-stream", None) + chunk(b"data: " + b"x" * 3000))
            for _ in range(5):
                writer.write(chunk(b"y" * 1000))
            writer.write(chunk(b"\n\n") + b"0\r\n\r\n")
        elif tool == "giant_chunk":  # announces 1 GB in one chunk, sends more than the limit, then stalls
            writer.write(head(200, "application/json", None) + b"40000000\r\n" + b"x" * 5000)
            await writer.drain()
            await reader_closed(writer)
        elif tool == "bad_chunk":
            writer.write(head(200, "application/json", None) + b"-5\r\nxx\r\n")
        elif tool == "drop_next":
            data = json.dumps(ok).encode()
            writer.write(head(200, "application/json", len(data)) + data)
        elif tool == "hang":
            writer.write(head(200, "text/event-stream", None) + chunk(sse({"jsonrpc": "2.0", "method": "notifications/message",
                                                                              "params": {"level": "info", "data": "working"}})))
            await writer.drain()
            try:
                await reader_closed(writer)
            finally:
                script.cancelled_posts += 1
        elif tool == "wrong_type":
            writer.write(head(200, "text/html", 13) + b"<html></html>")
        elif tool == "status500":
            writer.write(head(500, "text/plain", 4) + b"boom")
        elif tool == "rpc_error_400":
            data = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32602, "message": "bad arguments"}}).encode()
            writer.write(head(400, "application/json", len(data)) + data)
        elif tool == "unanswered":
            data = sse({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "bye"}})
            writer.write(head(200, "text/event-stream", len(data)) + data)
        elif tool == "expire":
            writer.write(head(404, "text/plain", 7) + b"expired")
        elif tool == "not_rpc":
            writer.write(head(200, "application/json", 7) + b"[1,2,3]")

    async def reader_closed(writer: asyncio.StreamWriter) -> None:
        while not writer.transport.is_closing():
            writer.write(b"")  # nothing: wait until the client closes the stream
            await asyncio.sleep(0.05)
            with contextlib.suppress(Exception):
                writer.write(chunk(b": ping\n\n"))
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/mcp", script
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


class Handler:
    def __init__(self) -> None:
        self.notifications: list[Message] = []
        self.requests: list[Message] = []

    async def upstream_request(self, upstream: Upstream, message: Message) -> None:
        self.requests.append(message)
        await upstream.respond(result(message["id"], {"roots": []}))

    async def upstream_notification(self, upstream: Upstream, message: Message) -> None:
        self.notifications.append(message)

    async def upstream_changed(self, upstream: Upstream) -> None:
        return None


@contextlib.asynccontextmanager
async def connected(url: str, **kw: Any) -> AsyncIterator[tuple[Upstream, Handler]]:
    handler = Handler()
    up = Upstream(UpstreamConfig(name="up", url=url, timeout=kw.pop("timeout", 5.0), startup_timeout=5.0, **kw), handler)
    try:
        await up.start({"roots": {}})
        assert up.status == "ready", up.last_error
        yield up, handler
    finally:
        await up.close()


async def call(up: Upstream, tool: str, timeout: float | None = None) -> Message:  # noqa: ASYNC109
    return await up.call("tools/call", {"name": tool, "arguments": {}}, timeout=timeout)


def text(response: Message) -> str:
    return str(response["result"]["content"][0]["text"])


async def test_handshake_era_headers_json_chunked_and_sse_answers() -> None:
    async with scripted_upstream() as (url, script), connected(url, headers={"Authorization": "Bearer own"}) as (up, handler):
        assert [t["name"] for t in up.tools] == TOOLS
        assert text(await call(up, "json")) == "json ok"
        assert text(await call(up, "chunked")) == "chunked ok"
        assert text(await call(up, "sse")) == "sse ok"
        assert [n["method"] for n in handler.notifications] == ["notifications/progress"]
        posts = [(h, b) for m, h, b in script.requests if m == "POST"]
        assert posts[0][1]["method"] == "initialize" and "mcp-session-id" not in posts[0][0]
        for headers, _ in posts[1:]:
            assert headers["mcp-session-id"] == "s1"
            assert headers["mcp-protocol-version"] == "2025-11-25"
            assert headers["authorization"] == "Bearer own"
            assert headers["accept"] == "application/json, text/event-stream"


async def test_server_request_with_our_id_and_answer_under_a_foreign_id() -> None:
    """A server-to-client request reusing the guard's request id is a request (answered by POST);
    the response on the request's own stream answers that request, whatever id it names."""
    async with scripted_upstream() as (url, script), connected(url) as (up, handler):
        answer = await call(up, "collide")
        assert text(answer) == "mine"
        assert [r["method"] for r in handler.requests] == ["roots/list"]
        for _ in range(50):
            if any(isinstance(b, dict) and "result" in b and "roots" in b["result"] for _, _, b in script.requests):
                break
            await asyncio.sleep(0.02)
        sent = [b for _, _, b in script.requests if isinstance(b, dict) and "result" in b]
        assert sent == [{"jsonrpc": "2.0", "id": handler.requests[0]["id"], "result": {"roots": []}}]
        assert text(await call(up, "json")) == "json ok"  # the channel is unharmed


@pytest.mark.parametrize(
    ("tool", "says"),
    [
        ("malformed_sse", "not a JSON-RPC message"),
        ("wrong_type", "content type text/html"),
        ("status500", "HTTP 500"),
        ("unanswered", "without answering"),
        ("not_rpc", "not a JSON-RPC response"),
        ("bad_chunk", "malformed chunked body"),
    ],
)
async def test_broken_answers_are_one_sentence_errors(tool: str, says: str) -> None:
    async with scripted_upstream() as (url, _), connected(url) as (up, _h):
        answer = await call(up, tool)
        assert answer["error"]["message"].startswith("upstream up ") and says in answer["error"]["message"]
        assert "Traceback" not in answer["error"]["message"]
        assert text(await call(up, "json")) == "json ok"  # one broken answer does not take the upstream down
        assert up.status == "ready"


async def test_a_kept_alive_connection_closed_as_a_request_goes_out_is_retried_once_on_a_new_one() -> None:
    async with scripted_upstream() as (url, script), connected(url) as (up, _h):
        assert text(await call(up, "drop_next")) == "drop_next ok"
        assert text(await call(up, "json")) == "json ok"  # sent on the kept-alive connection, which closes
        assert script.dropped == 1


async def test_a_json_rpc_error_at_an_http_error_status_is_passed_on_with_our_id() -> None:
    async with scripted_upstream() as (url, _), connected(url) as (up, _h):
        answer = await call(up, "rpc_error_400")
        assert answer["error"] == {"code": -32602, "message": "bad arguments"}
        assert isinstance(answer["id"], int)


@pytest.mark.parametrize("tool", ["giant", "giant_sse", "giant_chunk"])
async def test_an_answer_over_the_limit_is_refused(tool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_channel, "MESSAGE_LIMIT", 2000)
    async with scripted_upstream() as (url, _), connected(url) as (up, _h):
        answer = await call(up, tool)
        assert "over the limit of 2000 bytes" in answer["error"]["message"]
        assert text(await call(up, "json")) == "json ok"


async def test_an_upstream_hanging_mid_stream_times_out_and_its_stream_is_closed() -> None:
    async with scripted_upstream() as (url, script), connected(url) as (up, handler):
        with pytest.raises(UpstreamError, match=r"did not answer tools/call within 0\.5s"):
            await call(up, "hang", timeout=0.5)
        assert [n["params"]["data"] for n in handler.notifications] == ["working"]  # relayed before the hang
        for _ in range(100):
            if script.cancelled_posts:
                break
            await asyncio.sleep(0.02)
        assert script.cancelled_posts == 1  # the guard closed the hanging POST
        assert "notifications/cancelled" in script.methods()  # the handshake era is told in words too
        assert text(await call(up, "json")) == "json ok"


async def test_an_expired_session_is_initialized_again() -> None:
    async with scripted_upstream() as (url, script), connected(url) as (up, _h):
        answer = await call(up, "expire")
        assert "ended its session (HTTP 404)" in answer["error"]["message"]
        for _ in range(200):
            if up.status == "ready" and script.sessions == 2:
                break
            await asyncio.sleep(0.02)
        assert script.sessions == 2
        assert text(await call(up, "json")) == "json ok"
        assert script.requests[-1][1]["mcp-session-id"] == "s2"


async def test_standalone_stream_relays_what_the_upstream_sends_on_its_own() -> None:
    async with scripted_upstream() as (url, script), connected(url) as (_up, handler):
        for _ in range(100):
            if script.get_streams:
                break
            await asyncio.sleep(0.02)
        assert script.get_streams == 1
        get_headers = next(h for m, h, _ in script.requests if m == "GET")
        assert get_headers["accept"] == "text/event-stream" and get_headers["mcp-session-id"] == "s1"
        script.push.put_nowait(sse({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}))
        script.push.put_nowait(sse({"jsonrpc": "2.0", "id": 1, "result": {}}))  # a response here answers nothing
        script.push.put_nowait(b"data: garbage\n\n")
        script.push.put_nowait(sse({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "after"}}))
        for _ in range(100):
            if len(handler.notifications) == 2:
                break
            await asyncio.sleep(0.02)
        assert [n["method"] for n in handler.notifications] == ["notifications/tools/list_changed", "notifications/message"]
    assert script.requests[-1][0] == "DELETE"  # the session is ended on close


async def test_modern_era_headers_and_cancellation_by_closing_the_stream() -> None:
    async with scripted_upstream(modern=True) as (url, script), connected(url, protocol="modern") as (up, _h):
        assert up.era == "modern"
        assert text(await call(up, "json")) == "json ok"
        posts = [(h, b) for m, h, b in script.requests if m == "POST"]
        assert posts[0][1]["method"] == "server/discover"
        for headers, body in posts:
            assert headers["mcp-protocol-version"] == "2026-07-28"
            assert headers["mcp-method"] == body["method"]
            assert "mcp-session-id" not in headers
        assert posts[-1][0]["mcp-name"] == "json"
        with pytest.raises(UpstreamError):
            await call(up, "hang", timeout=0.3)
        for _ in range(100):
            if script.cancelled_posts:
                break
            await asyncio.sleep(0.02)
        assert script.cancelled_posts == 1
        assert "notifications/cancelled" not in script.methods()  # 2026-07-28 has no such POST


async def test_an_unreachable_upstream_is_down_with_a_clear_reason() -> None:
    up = Upstream(UpstreamConfig(name="gone", url="http://127.0.0.1:9/mcp", timeout=2, startup_timeout=2), Handler())
    try:
        await up.start({})
        assert up.status in ("down", "starting")
        assert up.last_error.startswith("upstream gone is unreachable at http://127.0.0.1:9/mcp"), up.last_error
        with pytest.raises(UpstreamError, match="unreachable"):
            await call(up, "json")
    finally:
        await up.close()


async def test_sse_parser_edges() -> None:
    async def feed(*parts: bytes) -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    events = [e async for e in sse_events(feed(b"event: message\r\ndata: a\r\n", b"data: b\r\n\r\n", b": c\n\nid: 7\nretry: 5\n\n",
                                               b"data:c\n\n"), 100)]
    assert events == [("message", "a\nb"), ("message", "c")]
    with pytest.raises(SseError):
        _ = [e async for e in sse_events(feed(b"data: " + b"x" * 60, b"x" * 60), 100)]
    with pytest.raises(SseError):
        _ = [e async for e in sse_events(feed(b"data: \xff\xfe\n\n"), 100)]


def test_proxy_rule() -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,.internal"}
    assert upstream_proxied("https://mcp.example.com/mcp", env)
    assert not upstream_proxied("https://a.internal/mcp", env)
    assert not upstream_proxied("http://mcp.example.com/mcp", env)  # only HTTPS_PROXY is set
    assert upstream_proxied("http://x/mcp", {"ALL_PROXY": "socks5://p"})
    assert not upstream_proxied("http://x/mcp", {"http_proxy": "http://p", "no_proxy": "*"})


async def test_an_answer_skips_the_reader_task_only_when_nothing_came_before_it() -> None:
    """A plain JSON answer goes straight to its call; an answer whose stream brought a notification
    first waits behind it, so the notification is handled before the call returns."""

    class Slow(Handler):
        async def upstream_notification(self, upstream: Upstream, message: Message) -> None:
            await asyncio.sleep(0.2)  # the reader is busy with it while the answer arrives
            self.notifications.append(message)

    async with scripted_upstream() as (url, _script):
        handler = Slow()
        up = Upstream(UpstreamConfig(name="up", url=url, timeout=5.0, startup_timeout=5.0), handler)
        try:
            await up.start({"roots": {}})
            channel = up._channel
            assert isinstance(channel, http_channel.HttpChannel)
            queued: list[Message | None] = []
            put = channel._inbox.put_nowait
            channel._inbox.put_nowait = lambda m: (queued.append(m), put(m))[1]  # type: ignore[method-assign]
            assert text(await call(up, "json")) == "json ok"
            assert queued == []  # not through the reader task
            assert text(await call(up, "sse")) == "sse ok"
            assert [n["method"] for n in handler.notifications] == ["notifications/progress"]  # handled first
            assert [m and m.get("method", "answer") for m in queued] == ["notifications/progress", "answer"]
        finally:
            await up.close()


def test_a_session_s_headers_are_made_again_when_its_id_or_version_changes() -> None:
    channel = http_channel.HttpChannel(UpstreamConfig(name="up", url="http://127.0.0.1:9/mcp"))
    assert "Mcp-Session-Id" not in channel._headers({}, "tools/call", modern=False)
    channel._session, channel._version = "a", "2025-11-25"
    first = channel._headers({}, "tools/call", modern=False)
    assert channel._headers({}, "tools/call", modern=False) is first  # kept while the session is the same
    channel._session = "b"
    assert channel._headers({}, "tools/call", modern=False)["Mcp-Session-Id"] == "b"


async def test_a_header_line_break_is_refused_every_time_never_kept() -> None:
    from mcp_guard.upstreams.http1 import Http1Link

    link = Http1Link("http://127.0.0.1:9/mcp", {})
    for _ in range(2):
        with pytest.raises(UpstreamError, match="line break"):
            await link.request("POST", {"Mcp-Session-Id": "a\r\nX-Evil: 1"}, b"{}")
    assert link._blocks == {}
    assert link._block({"A": "1"}) == b"A: 1\r\n" and link._block({"A": "2"}) == b"A: 2\r\n"
