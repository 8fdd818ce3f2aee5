"""Resuming an upstream's event stream that closed before its answer, against a flaky upstream on a
real loopback socket: after the upstream's ``retry`` the guard reconnects with ``GET`` and
``Last-Event-ID``, a bounded number of times, and otherwise fails that call with one sentence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mcp_guard.jsonrpc import result
from mcp_guard.upstreams import http as http_channel
from tests.upstreams.test_http_channel import call, connected, text

Resume = Callable[[int, str, int], bytes]  # (resumption number, Last-Event-ID, pending request id) -> the GET's answer


def head(status: int, ctype: str | None, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "")
            + f"Mcp-Session-Id: s1\r\n{extra}Connection: close\r\n\r\n").encode()


def json_answer(message: Any) -> bytes:
    data = json.dumps(message).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s1\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)


class Flaky:
    def __init__(self, first: bytes, resume: Resume) -> None:
        self.first = first  # the tools/call stream: events, then the connection closes unanswered
        self.resume = resume
        self.resumptions: list[tuple[float, str]] = []  # (when, Last-Event-ID)
        self.closed_at = 0.0
        self.pending = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                raw = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines = raw.split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0"))
                body = json.loads(await reader.readexactly(length)) if length else None
                if lines[0].startswith("GET"):
                    last = headers.get("last-event-id")
                    if last is None:
                        writer.write(head(405, None, "Content-Length: 0\r\n"))  # no standalone stream
                        continue
                    self.resumptions.append((time.monotonic(), last))
                    writer.write(self.resume(len(self.resumptions), last, self.pending))
                    break
                if lines[0].startswith("DELETE") or "id" not in body:
                    writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                    continue
                rid, method = body["id"], body["method"]
                if method == "initialize":
                    writer.write(json_answer(result(rid, {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                                          "serverInfo": {"name": "flaky", "version": "1"}})))
                elif method == "tools/list":
                    writer.write(json_answer(result(rid, {"tools": [{"name": "slow", "inputSchema": {"type": "object"}}]})))
                else:
                    self.pending = rid
                    writer.write(head(200, "text/event-stream") + self.first)
                    await writer.drain()
                    self.closed_at = time.monotonic()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def flaky(first: bytes, resume: Resume) -> AsyncIterator[tuple[str, Flaky]]:
    upstream = Flaky(first, resume)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp", upstream
    finally:
        server.close()


def answer_on_stream(n: int, last: str, rid: int) -> bytes:
    message = result(rid, {"content": [{"type": "text", "text": f"resumed after {last}"}], "isError": False})
    return head(200, "text/event-stream") + b"id: r%d\ndata: %s\n\n" % (n, json.dumps(message).encode())


async def test_a_stream_closed_before_its_answer_is_resumed_after_the_retry_delay() -> None:
    async with flaky(b"id: ev-7\nretry: 300\ndata: \n\n", answer_on_stream) as (url, upstream), connected(url) as (up, _):
        assert text(await call(up, "slow")) == "resumed after ev-7"
        [(when, last)] = upstream.resumptions
        assert last == "ev-7"
        assert when - upstream.closed_at >= 0.28  # the upstream's retry, honoured


async def test_a_stream_without_an_event_id_cannot_be_resumed_and_fails_the_call() -> None:
    async with flaky(b"data: \n\n", answer_on_stream) as (url, upstream), connected(url) as (up, _):
        response = await call(up, "slow")
        assert response["error"]["message"] == "upstream up closed the event stream of tools/call without answering it"
        assert upstream.resumptions == []


async def test_fruitless_resumptions_are_bounded_then_the_call_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(n: int, last: str, rid: int) -> bytes:
        return head(200, "text/event-stream") + b": nothing new\n\n"

    async with flaky(b"id: 1\nretry: 20\n\n", nothing) as (url, upstream), connected(url) as (up, _):
        response = await call(up, "slow")
        assert response["error"]["message"] == ("upstream up closed the event stream of tools/call without answering it,"
                                                f" and {http_channel.RESUME_ATTEMPTS} attempts to resume it brought no answer")
        assert [last for _, last in upstream.resumptions] == ["1"] * http_channel.RESUME_ATTEMPTS


async def test_a_stream_that_moves_on_forever_is_cut_at_the_total_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_channel, "RESUME_TOTAL", 5)

    def another_id(n: int, last: str, rid: int) -> bytes:
        return head(200, "text/event-stream") + b"id: next-%d\nretry: 10\ndata: \n\n" % n

    async with flaky(b"id: 0\nretry: 10\n\n", another_id) as (url, upstream), connected(url) as (up, _):
        response = await call(up, "slow")
        assert "5 attempts to resume it brought no answer" in response["error"]["message"]
        assert len(upstream.resumptions) == 5


@pytest.mark.parametrize(("answer", "says"), [
    (head(307, None, "Location: http://elsewhere.example/mcp\r\nContent-Length: 0\r\n"),
     "answered the resumption of tools/call's event stream with a redirect to http://elsewhere.example/mcp, which is not followed"),
    (head(405, None, "Content-Length: 0\r\n"),
     "closed the event stream of tools/call without answering it and refused to resume it (HTTP 405)"),
])
async def test_a_refused_or_redirected_resumption_fails_the_call_with_one_sentence(answer: bytes, says: str) -> None:
    async with flaky(b"id: 1\nretry: 10\n\n", lambda n, last, rid: answer) as (url, _), connected(url) as (up, _h):
        response = await call(up, "slow")
        assert response["error"]["message"] == f"upstream up {says}"


async def test_a_huge_retry_is_cut_to_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_channel, "RESUME_DELAY_MAX", 0.05)
    async with flaky(b"id: 1\nretry: 86400000\n\n", answer_on_stream) as (url, _), connected(url) as (up, _h):
        assert text(await call(up, "slow", timeout=3)) == "resumed after 1"
