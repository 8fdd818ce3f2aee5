"""The host-facing stdio transport: newline-delimited JSON-RPC on stdin/stdout.

stdout carries MCP messages only; everything else the guard says goes to stderr.  Reads use
asyncio pipes (no thread per line); a malformed line is answered with a parse error and never
stops the guard.

stdin is split into lines by the pipe's own protocol (``_Input``), not by a stream reader and a
read loop.  While the pump is idle a line is parsed and handed to the session's synchronous
``accept`` right there: a plain request starts its task with no wake-up of the read loop.  What
``accept`` cannot finish at once (a notification, a refusal to send) and every line that arrives
while anything before it is still being handled is queued for the read loop, so the host's
messages keep their order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import stat
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import orjson

from mcp_guard.jsonrpc import INTERNAL_ERROR, PARSE_ERROR, LineSplitter, Message, dumps, error

log = logging.getLogger("mcp_guard.stdio")

LINE_LIMIT = 64 * 1024 * 1024


def _pollable(f: BinaryIO) -> bool:
    """A pipe, socket or terminal, which the event loop can watch.  Anything else (a regular file,
    ``/dev/null``) is read in a thread and written plainly: epoll refuses such descriptors, which the
    standard loop reports as an error and uvloop as an abort."""
    fd = f.fileno()
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


class _Output(asyncio.streams.FlowControlMixin):
    """The stdout pipe's protocol: the loop watches the pipe's read end, so ``lost`` is set as soon
    as the host closes it, before anything is written into the void."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = asyncio.Event()
        self.paused = False  # the pipe is full: a write must wait for ``drain``

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost.set()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused = False


Accept = Callable[[Any], Awaitable[None] | None]
"""A session's synchronous entry: handles a message at once (None) or returns what is left to await."""

_END = None  # queued after the last line


class _Input(asyncio.Protocol):
    """stdin's protocol: the bytes split into lines here and handed to ``StdioHost.line``.  A line
    over ``LINE_LIMIT`` is dropped up to its newline and answered with one parse error."""

    def __init__(self, host: StdioHost) -> None:
        self._host = host
        self._lines = LineSplitter(host.line, host.overrun, LINE_LIMIT, resume=True)

    def data_received(self, data: bytes) -> None:
        self._lines.feed(data)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        last = self._lines.end()
        if last is not None:  # a last line without its newline
            self._host.line(last)
        self._host.ended()


class StdioHost:
    def __init__(self) -> None:
        self._input: _Input | None = None
        self._stdin: asyncio.ReadTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._output: _Output | None = None
        self._out: BinaryIO | None = None  # stdout when it is a regular file (`> log.jsonl`)
        self._gone = False
        # lines (bytes), what ``accept`` left to await, and _END, in the order the host sent them
        self._queue: collections.deque[bytes | Awaitable[None] | None] = collections.deque()
        self._queued_bytes = 0
        self._waiter: asyncio.Future[None] | None = None  # set while the read loop is idle
        self._accept: Accept | None = None
        self._ended = False

    @property
    def gone(self) -> bool:
        """The host closed the guard's stdout: nothing written can reach it any more."""
        return self._gone or (self._writer is not None and self._writer.transport.is_closing())

    async def hung_up(self) -> None:
        """Return once the host has closed the guard's stdout (never, for a regular file)."""
        if self._output is None:
            await asyncio.Event().wait()
            return
        await self._output.lost.wait()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._input = reading = _Input(self)
        stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb", 0)
        if _pollable(stdin):
            self._stdin, _ = await loop.connect_read_pipe(lambda: reading, stdin)
        else:  # a regular file (`< requests.jsonl`): no pipe to poll, read it in a thread
            threading.Thread(target=_feed, args=(stdin, reading, loop), name="stdin-reader", daemon=True).start()
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", 0)
        if not _pollable(stdout):  # a regular file: plain writes never block for long
            self._out = stdout
            return
        output, self._output = await loop.connect_write_pipe(_Output, stdout)
        self._writer = asyncio.StreamWriter(output, self._output, None, loop)

    async def send(self, message: Message) -> None:
        """Write one message; once the host has hung up, messages are dropped (said once, at INFO)."""
        if self.gone:
            return
        try:
            if self._out is not None:
                self._out.write(dumps(message))
                return
            assert self._writer is not None and self._output is not None
            self._writer.write(dumps(message))
            if self._output.paused or self._output.lost.is_set():  # else drain() would return at once
                await self._writer.drain()
        except OSError as exc:  # BrokenPipeError, ConnectionResetError: the host is gone
            self._gone = True
            if self._output is not None:
                self._output.lost.set()
            log.info("the host closed the guard's output (%s); answers still pending are dropped", exc.strerror or exc)

    async def serve(self, handle: Callable[[Any], Awaitable[None]], accept: Accept | None = None) -> None:
        """Read until EOF, handing each parsed message to ``handle`` (or, while nothing is queued,
        to ``accept`` as soon as its line arrives)."""
        assert self._input is not None
        self._accept = accept
        queue = self._queue
        try:
            while True:
                while not queue:
                    self._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                item = queue.popleft()
                if item is _END:
                    queue.appendleft(item)
                    return
                if isinstance(item, bytes):
                    self._queued_bytes -= len(item)
                    if self._stdin is not None and self._queued_bytes < LINE_LIMIT // 2:
                        self._reading(True)
                    await deliver_line(item, handle, self.send)
                else:
                    await finish(item, self.send)
        finally:
            self._accept = None

    # ------------------------------------------------------------------ stdin, line by line (``_Input``)

    def line(self, line: bytes) -> None:
        """One line of stdin: accepted at once while the read loop is idle, else queued behind
        what came before it."""
        accept, waiter = self._accept, self._waiter
        if accept is not None and waiter is not None and not waiter.done() and not self._queue:
            rest = accept_line(line, accept, self.send)
            if rest is not None:
                self._push(rest)
            return
        self._queued_bytes += len(line)
        self._push(line)
        if self._stdin is not None and self._queued_bytes > 2 * LINE_LIMIT:
            self._reading(False)  # back-pressure: the host waits until the loop catches up

    def overrun(self) -> None:
        log.warning("the host sent a line over %d bytes; it is dropped", LINE_LIMIT)
        self._push(self.send(error(None, PARSE_ERROR, f"Parse error: message larger than {LINE_LIMIT} bytes")))

    def ended(self) -> None:
        if not self._ended:
            self._ended = True
            self._push(_END)

    def _push(self, item: bytes | Awaitable[None] | None) -> None:
        self._queue.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _reading(self, on: bool) -> None:
        assert self._stdin is not None
        with contextlib.suppress(Exception):  # a pipe already closed has nothing to pause
            if on:
                self._stdin.resume_reading()
            else:
                self._stdin.pause_reading()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._out is not None:
            self._out.close()


async def deliver_line(line: bytes, handle: Callable[[Any], Awaitable[None]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
    """One line from the host: parsed and handed to ``handle``; a line that is not JSON is answered
    with a parse error, and a message whose handling fails with an internal error."""
    rest = accept_line(line, handle, send)
    if rest is not None:
        await finish(rest, send)


def accept_line(line: bytes, accept: Accept, send: Callable[[Message], Awaitable[None]]) -> Awaitable[None] | None:
    """``deliver_line``'s synchronous part: the line parsed and handed to ``accept``; returns what is
    left to await (the rest of the handling, or the answer to a line that is not JSON)."""
    if not line.strip():
        return None
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        log.warning("the host sent a line that is not JSON: %.200r", line)
        return send(error(None, PARSE_ERROR, "Parse error: the line is not valid JSON"))
    try:
        return accept(message)
    except Exception:  # process edge: one bad message must never end the session
        log.exception("handling a message from the host failed")
        return send(error(None, INTERNAL_ERROR, "Internal error: mcp-guard could not handle the message"))


async def finish(rest: Awaitable[None], send: Callable[[Message], Awaitable[None]]) -> None:
    """Await what ``accept_line`` left; a failure is answered with an internal error."""
    try:
        await rest
    except Exception:  # process edge: one bad message must never end the session
        log.exception("handling a message from the host failed")
        await send(error(None, INTERNAL_ERROR, "Internal error: mcp-guard could not handle the message"))


def _feed(source: BinaryIO, reading: _Input, loop: asyncio.AbstractEventLoop) -> None:
    """Hand a file's bytes to the event loop's line splitter, then EOF."""
    try:
        while chunk := source.read(64 * 1024):
            loop.call_soon_threadsafe(reading.data_received, chunk)
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(RuntimeError):  # the loop may be gone already
            loop.call_soon_threadsafe(reading.eof_received)
