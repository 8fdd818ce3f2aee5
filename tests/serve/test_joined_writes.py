"""``serve``'s connections: a response's head and body leave in one write, and nothing is held past
the loop turn that wrote it (a real uvicorn server on a loopback socket)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from mcp_guard.serve.drain import listener
from mcp_guard.serve.wire import JoinedWrites, JoinedWritesProtocol

WRITES: list[bytes] = []  # what reached the real transports, one entry per write


class Counted(JoinedWritesProtocol):
    """The guard's protocol, with every write that reaches the socket's transport recorded."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        real_write = transport.write

        def write(data: Any) -> None:
            WRITES.append(bytes(data))
            real_write(data)

        transport.write = write  # type: ignore[method-assign]
        super().connection_made(transport)


STATE: dict[str, asyncio.Event] = {}  # "second": set when the client read the first event (made per server)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/events":  # two SSE events, the second only after the client read the first
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await asyncio.wait_for(STATE["second"].wait(), 5)
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": False})
        return
    close = scope["path"] == "/close"
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[int]:
    WRITES.clear()
    STATE["second"] = asyncio.Event()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections wait in the backlog until the server accepts them
    srv = uvicorn.Server(uvicorn.Config(app, http=Counted, log_level="warning", lifespan="off"))
    task = asyncio.ensure_future(srv.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head + await reader.readexactly(length)


async def test_each_response_leaves_in_one_write_on_a_kept_alive_connection() -> None:
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"GET /json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = await asyncio.wait_for(read_response(reader), 5)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'\r\n\r\n{"ok":true}')
        writer.close()
    assert len(WRITES) == 3  # uvicorn alone: 6 (head, then body)
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b'{"ok":true}') for w in WRITES)


async def test_a_closing_response_is_written_whole_before_the_connection_closes() -> None:
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /close HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        everything = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closed after writing
        writer.close()
    assert everything.startswith(b"HTTP/1.1 200 OK\r\n") and everything.endswith(b'{"ok":true}')
    assert b"connection: close" in everything.lower()


async def test_a_stream_event_is_not_held_back_for_the_next_one() -> None:
    """The second event is sent only after the client read the first: a write held past its loop
    turn would deadlock here."""
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        first = await asyncio.wait_for(reader.readuntil(b"one\n\n\r\n"), 5)
        assert first.endswith(b"data: one\n\n\r\n")
        STATE["second"].set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert b"data: two\n\n" in rest
        writer.close()


async def test_abort_drops_what_was_gathered_and_close_sends_it_first() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
    joined = JoinedWrites(transport, loop)  # type: ignore[arg-type]
    joined.write(b"kept ")
    joined.write(b"whole")
    assert joined.get_write_buffer_size() >= len(b"kept whole")
    joined.close()
    b.settimeout(5)
    assert b.recv(100) == b"kept whole"
    b.close()

    c, d = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=c)
    joined = JoinedWrites(transport, loop)  # type: ignore[arg-type]
    joined.write(b"dropped")
    joined.abort()
    await asyncio.sleep(0.05)
    d.settimeout(5)
    assert d.recv(100) == b""  # nothing, then EOF
    d.close()


def test_serve_listeners_use_the_joined_writes_protocol() -> None:
    config = listener(app, "127.0.0.1", 0, 1.0).config
    assert config.http is JoinedWritesProtocol


@pytest.fixture(autouse=True)
def _reset() -> None:
    WRITES.clear()
