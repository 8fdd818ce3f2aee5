"""``serve``'s connections: a response's head and body leave in one write, and nothing is held past
the loop turn that wrote it (a real uvicorn server on a loopback socket)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

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


class Clock:
    """A loop's clock and timers, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []
        self.made = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> Any:
        self.made += 1
        entry = (self.now + delay, callback)
        self.timers.append(entry)
        return SimpleNamespace(cancel=lambda: self.timers.remove(entry) if entry in self.timers else None)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for entry in sorted(t for t in self.timers if t[0] <= self.now):
            self.timers.remove(entry)
            entry[1]()


def test_one_keep_alive_timer_per_idle_stretch_and_an_idle_connection_closed_on_time() -> None:
    clock = Clock()
    proto = JoinedWritesProtocol(uvicorn.Config(app, timeout_keep_alive=5), ServerState(), {}, _loop=clock)  # type: ignore[arg-type]
    closed: list[bool] = []
    proto.transport = SimpleNamespace(is_closing=lambda: bool(closed), close=lambda: closed.append(True))  # type: ignore[assignment]
    proto.flow = SimpleNamespace(resume_reading=lambda: None)  # type: ignore[assignment]
    for _ in range(20):  # a request every second for 20 s: one timer, moved on when it fires
        proto._unset_keepalive_if_required()  # the request's bytes arrive
        proto.on_response_complete()
        clock.advance(1)
    assert not closed and clock.made <= 5  # uvicorn: 20 made and cancelled
    proto._unset_keepalive_if_required()  # a slow request in flight when the timer fires: never closed under it
    clock.advance(10)
    assert not closed and not clock.timers
    proto.on_response_complete()
    clock.advance(4.9)
    assert not closed
    clock.advance(0.2)  # 5 s after its last response
    assert closed == [True]


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
