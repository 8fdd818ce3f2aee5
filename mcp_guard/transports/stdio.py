"""The host-facing stdio transport: newline-delimited JSON-RPC on stdin/stdout.

stdout carries MCP messages only; everything else the guard says goes to stderr.  Reads use
asyncio pipes (no thread per line); a malformed line is answered with a parse error and never
stops the guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import orjson

from mcp_guard.jsonrpc import INTERNAL_ERROR, PARSE_ERROR, Message, dumps, error

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


class StdioHost:
    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._output: _Output | None = None
        self._out: BinaryIO | None = None  # stdout when it is a regular file (`> log.jsonl`)
        self._gone = False

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
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb", 0)
        if _pollable(stdin):
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
        else:  # a regular file (`< requests.jsonl`): no pipe to poll, read it in a thread
            threading.Thread(target=_feed, args=(stdin, reader, loop), name="stdin-reader", daemon=True).start()
        self._reader = reader
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", 0)
        if not _pollable(stdout):  # a regular file: plain writes never block for long
            self._out = stdout
            return
        transport, self._output = await loop.connect_write_pipe(_Output, stdout)
        self._writer = asyncio.StreamWriter(transport, self._output, reader, loop)

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

    async def serve(self, handle: Callable[[Any], Awaitable[None]]) -> None:
        """Read until EOF, handing each parsed message to ``handle``."""
        assert self._reader is not None
        while True:
            try:
                line = await self._reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                await self.send(error(None, PARSE_ERROR, f"Parse error: message larger than {LINE_LIMIT} bytes"))
                continue
            if not line:
                return
            await deliver_line(line, handle, self.send)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._out is not None:
            self._out.close()


async def deliver_line(line: bytes, handle: Callable[[Any], Awaitable[None]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
    """One line from the host: parsed and handed to ``handle``; a line that is not JSON is answered
    with a parse error, and a message whose handling fails with an internal error."""
    if not line.strip():
        return
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        log.warning("the host sent a line that is not JSON: %.200r", line)
        await send(error(None, PARSE_ERROR, "Parse error: the line is not valid JSON"))
        return
    try:
        await handle(message)
    except Exception:  # process edge: one bad message must never end the session
        log.exception("handling a message from the host failed")
        await send(error(None, INTERNAL_ERROR, "Internal error: mcp-guard could not handle the message"))


def _feed(source: BinaryIO, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
    """Hand a file's lines to the event loop's reader, then EOF."""
    try:
        for line in source:
            loop.call_soon_threadsafe(reader.feed_data, line)
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(RuntimeError):  # the loop may be gone already
            loop.call_soon_threadsafe(reader.feed_eof)
