"""An in-memory pair of message streams: the host side of a guard without a process or a pipe.

``memory_pair()`` gives the guard's end (``MemoryHost``, shaped like ``StdioHost``: ``serve``,
``send``, ``gone``, ``close``) and the host application's end (``MemoryPeer``).  What crosses is
the bytes of one JSON-RPC message per line, exactly as on stdio, so the guard parses, refuses
malformed lines and serialises its answers as it does for a real host.  Tests and embedders use
it to run a whole guard in the caller's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from mcp_guard.jsonrpc import Message, dumps
from mcp_guard.transports.stdio import deliver_line

_EOF = b""


class MemoryHost:
    """The guard's end: lines put by the peer are handed to the session; what the guard sends is
    queued for the peer as serialised lines."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._gone = False
        self._hung_up = asyncio.Event()

    @property
    def gone(self) -> bool:
        """The peer hung up: nothing sent can reach it any more."""
        return self._gone

    async def hung_up(self) -> None:
        """Return once the peer has stopped reading."""
        await self._hung_up.wait()

    async def send(self, message: Message) -> None:
        if not self._gone:
            await self._outbox.put(dumps(message))

    async def serve(self, handle: Callable[[Any], Awaitable[None]], accept: Callable[[Any], Awaitable[None] | None] | None = None) -> None:
        """Hand each line the peer sends to ``handle`` until the peer closes its side (``accept``,
        the session's synchronous entry, is for a pipe's own reader: a queue has none to skip)."""
        while (line := await self._inbox.get()) != _EOF:
            await deliver_line(line, handle, self.send)

    def hang_up(self) -> None:
        """The peer stopped reading (a host that closed the guard's stdout)."""
        self._gone = True
        self._hung_up.set()

    async def close(self) -> None:
        """The guard is done: the peer reads EOF after what was already sent."""
        await self._outbox.put(_EOF)


class MemoryPeer:
    """The host application's end: ``send`` a message (or a raw line), ``receive`` the next one."""

    def __init__(self, host: MemoryHost, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self._host = host
        self._to_guard = inbox
        self._from_guard = outbox
        self._eof = False

    async def send(self, message: Message) -> None:
        await self.send_line(dumps(message))

    async def send_line(self, line: bytes) -> None:
        """One raw line, delivered as a host's stdin line would be (malformed JSON included)."""
        await self._to_guard.put(line if line.endswith(b"\n") else line + b"\n")

    async def receive_line(self) -> bytes:
        """The next serialised message from the guard; ``b""`` once the guard has closed."""
        if self._eof:
            return _EOF
        line = await self._from_guard.get()
        self._eof = line == _EOF
        return line

    async def receive(self) -> Message | None:
        """The next message from the guard; None once the guard has closed."""
        line = await self.receive_line()
        if not line:
            return None
        message = orjson.loads(line)
        assert isinstance(message, dict)
        return message

    def close(self, *, hang_up: bool = False) -> None:
        """End the host's side, as closing the guard's stdin would; ``hang_up`` also stops reading
        what the guard sends (its stdout closed), so later answers are dropped."""
        if hang_up:
            self._host.hang_up()
        self._to_guard.put_nowait(_EOF)


def memory_pair() -> tuple[MemoryHost, MemoryPeer]:
    """A connected guard end and host end (unbounded queues: neither side waits on the other)."""
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    host = MemoryHost(inbox, outbox)
    return host, MemoryPeer(host, inbox, outbox)
