"""The host's stdin, split into lines by the pipe's own protocol: a real pipe carries what a host
writes, in awkward pieces.  While the pump is idle a line goes straight to the session's
synchronous ``accept``; whatever ``accept`` leaves to await, and every line behind it, is handled
in the host's order; an oversized line is dropped up to its newline and answered once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import orjson
import pytest

from mcp_guard.transports import stdio
from mcp_guard.transports.stdio import StdioHost


class _Pipes:
    def __init__(self) -> None:
        self.host_out, self.to_guard = os.pipe()  # the guard's stdin
        self.from_guard, self.host_in = os.pipe()  # the guard's stdout

    def write(self, data: bytes) -> None:
        os.write(self.to_guard, data)

    async def answer(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self._readline), 10)
        return dict(orjson.loads(line))

    def _readline(self) -> bytes:
        out = b""
        while not out.endswith(b"\n"):
            out += os.read(self.from_guard, 1)
        return out


@contextlib.asynccontextmanager
async def _piped(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[StdioHost, _Pipes]]:
    pipes = _Pipes()
    monkeypatch.setattr(sys, "stdin", os.fdopen(pipes.host_out, "rb", 0))
    monkeypatch.setattr(sys, "stdout", os.fdopen(pipes.host_in, "wb", 0))
    host = StdioHost()
    await host.open()
    yield host, pipes
    await host.close()
    for fd in (pipes.to_guard, pipes.from_guard):
        os.close(fd)


@pytest.fixture
async def piped(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[StdioHost, _Pipes]]:
    async with _piped(monkeypatch) as pair:
        yield pair


@pytest.fixture
async def piped_small(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[StdioHost, _Pipes]]:
    """``piped`` with lines of at most 1000 bytes (the limit is read when stdin is opened)."""
    monkeypatch.setattr(stdio, "LINE_LIMIT", 1000)
    async with _piped(monkeypatch) as pair:
        yield pair


async def test_a_line_behind_unfinished_handling_waits_its_turn(piped: tuple[StdioHost, _Pipes]) -> None:
    host, pipes = piped
    seen: list[tuple[str, str]] = []
    gate = asyncio.Event()

    async def handle(message: dict[str, Any]) -> None:
        if message["method"] == "slow":
            await gate.wait()
        seen.append(("handle", message["method"]))

    def accept(message: dict[str, Any]) -> Awaitable[None] | None:
        if message["method"].startswith("fast"):
            seen.append(("accept", message["method"]))
            return None
        return handle(message)

    serving = asyncio.ensure_future(host.serve(handle, accept))  # type: ignore[arg-type]
    pipes.write(b'{"method":"fast1"}\n{"method":"slow"}\n{"meth')
    for _ in range(200):
        await asyncio.sleep(0.01)
        if seen:
            break
    pipes.write(b'od":"fast2"}\n')
    await asyncio.sleep(0.2)
    assert seen == [("accept", "fast1")]  # fast2 is queued behind the unfinished slow one
    gate.set()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(seen) == 3:
            break
    # in the host's order; fast2 came while something was queued, so the pump's handle took it
    assert seen == [("accept", "fast1"), ("handle", "slow"), ("handle", "fast2")]
    pipes.write(b'{"method":"fast3"}\n')
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(seen) == 4:
            break
    assert seen[-1] == ("accept", "fast3")  # idle again: straight to accept
    os.close(pipes.to_guard)
    pipes.to_guard = os.open(os.devnull, os.O_RDONLY)  # closed by the fixture instead
    await asyncio.wait_for(serving, 10)


async def test_an_oversized_line_is_answered_once_and_the_next_line_is_served(
        piped_small: tuple[StdioHost, _Pipes]) -> None:
    host, pipes = piped_small
    got: list[Any] = []

    def accept(message: Any) -> None:
        got.append(message)

    serving = asyncio.ensure_future(host.serve(lambda m: asyncio.sleep(0), accept))
    # a line of 5000 bytes in pieces, whose tail would parse on its own, then a good line
    pipes.write(b'{"method":"huge","x":"' + b"a" * 1500)
    await asyncio.sleep(0.05)
    pipes.write(b"a" * 1500 + b'"}{"method":"smuggled"}')
    await asyncio.sleep(0.05)
    pipes.write(b'\n{"method":"next"}\nnot json\n')
    first = await pipes.answer()
    assert first["error"]["code"] == -32700 and "larger than 1000 bytes" in first["error"]["message"]
    second = await pipes.answer()
    assert second["error"]["code"] == -32700 and "not valid JSON" in second["error"]["message"]
    assert got == [{"method": "next"}]
    os.close(pipes.to_guard)
    pipes.to_guard = os.open(os.devnull, os.O_RDONLY)
    await asyncio.wait_for(serving, 10)


async def test_a_last_line_without_its_newline_is_served_at_eof(piped: tuple[StdioHost, _Pipes]) -> None:
    host, pipes = piped
    got: list[Any] = []

    async def handle(message: Any) -> None:
        got.append(message)

    serving = asyncio.ensure_future(host.serve(handle))
    pipes.write(b'{"method":"a"}\n{"method":"b"}')
    os.close(pipes.to_guard)
    pipes.to_guard = os.open(os.devnull, os.O_RDONLY)
    await asyncio.wait_for(serving, 10)
    assert got == [{"method": "a"}, {"method": "b"}]
