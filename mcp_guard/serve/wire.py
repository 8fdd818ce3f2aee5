"""``serve``'s HTTP/1.1 connections: uvicorn's httptools protocol, whose writes made in one turn of
the event loop leave as one write.

uvicorn writes a response's status line and headers, then its body, as two writes: two system
calls and two TCP segments (the socket has ``TCP_NODELAY``), so the caller is woken twice for one
answer.  Here the writes a response makes while its task runs are joined and sent once, when the
loop next runs its ready callbacks; nothing is held past that turn.  Parsing, limits, keep-alive
and every refusal stay uvicorn's own: only how the bytes are handed to the socket changes.
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
    """uvicorn's httptools protocol over ``JoinedWrites``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(JoinedWrites(transport, self.loop))  # type: ignore[arg-type]


__all__ = ["JoinedWrites", "JoinedWritesProtocol"]
