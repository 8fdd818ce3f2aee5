"""``serve``'s HTTP/1.1 connections: uvicorn's httptools protocol, whose writes made in one turn of
the event loop leave as one write, and whose keep-alive timer is not made again for every request.

uvicorn writes a response's status line and headers, then its body, as two writes: two system
calls and two TCP segments (the socket has ``TCP_NODELAY``), so the caller is woken twice for one
answer.  Here the writes a response makes while its task runs are joined and sent once, when the
loop next runs its ready callbacks; nothing is held past that turn.  Parsing, limits, keep-alive
and every refusal stay uvicorn's own: only how the bytes are handed to the socket changes.

uvicorn also makes a keep-alive timer after each response and cancels it when the next request's
bytes arrive: a timer made and cancelled per request.  Here one timer per idle stretch is kept; when
it fires on a connection that was used since, it is set again for the time left (or not at all while
a request is in flight), so an idle connection is still closed ``timeout_keep_alive`` after its last
response.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class JoinedWrites:
    """A transport that gathers the writes of one loop turn and passes them on as one; anything
    else (close, pause, extra info) goes to the real transport, after what is gathered."""

    __slots__ = ("_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(bytes(data))

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(len(p) for p in self._pending or ())

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info, ...
        return getattr(self.transport, name)


class JoinedWritesProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over ``JoinedWrites``, with its keep-alive timer kept per idle stretch."""

    _idle_at: float | None = None  # when the last response completed; None while a request is read or served

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(JoinedWrites(transport, self.loop))  # type: ignore[arg-type]

    def _unset_keepalive_if_required(self) -> None:
        self._idle_at = None  # in use: a timer that fires now finds it so and waits for the next response

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def on_response_complete(self) -> None:
        """uvicorn's, but for its keep-alive timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_at = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_at is None:
            return  # a request is in flight: its response sets the timer again
        left = self._idle_at + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()


__all__ = ["JoinedWrites", "JoinedWritesProtocol"]
