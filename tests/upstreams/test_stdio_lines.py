"""The stdio upstream's stdout, split into lines by its pipe protocol: a real child process writes
lines in awkward pieces; answers reach the waiting request at once only while nothing is queued
before them, so the upstream's messages keep their order."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest

from mcp_guard.config import UpstreamConfig
from mcp_guard.jsonrpc import Message
from mcp_guard.upstreams import stdio
from mcp_guard.upstreams.stdio import StdioChannel

# The child writes what the test sends it on stdin, byte for byte, as soon as it arrives (so the test
# decides where the pieces end), and exits when its stdin closes.
ECHO_BYTES = (
    "import os, sys\n"
    "while True:\n"
    "    data = os.read(0, 65536)\n"
    "    if not data:\n"
    "        break\n"
    "    os.write(1, data)\n"
)


def _channel() -> StdioChannel:
    return StdioChannel(UpstreamConfig(name="up", command=sys.executable, args=("-c", ECHO_BYTES), timeout=5))


async def _write(channel: StdioChannel, raw: bytes) -> None:
    proc = channel._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.write(raw)
    await proc.stdin.drain()


async def _until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the child's output did not arrive")


async def test_lines_split_across_pieces_and_junk_lines_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    channel = _channel()
    await channel.open()
    try:
        await _write(channel, b'{"jsonrpc":"2.0","method":"a"}\n\n  \nnot json\n[1,2]\n{"jsonrpc":"2.0",')
        await _until(lambda: len(channel._inbox) >= 1)
        await _write(channel, b'"method":"b"}\n{"jsonrpc":"2.0","method":"c"}\n{"jsonrpc":')
        await _write(channel, b'"2.0","method":"d"}\n')
        got = [await asyncio.wait_for(channel.receive(), 5) for _ in range(4)]
        assert [m["method"] for m in got if m is not None] == ["a", "b", "c", "d"]
        assert "not JSON" in caplog.text and "not a JSON-RPC object" in caplog.text
    finally:
        await channel.close()


async def test_an_answer_waits_behind_what_the_upstream_said_before_it() -> None:
    """A notification then the answer, both arrived while the reader was busy: the answer is queued
    behind the notification, never handed on first."""
    channel = _channel()
    answered: list[Message] = []

    def answer(message: Message) -> bool:
        if "method" in message:
            return False
        answered.append(message)
        return True

    channel.answer_with(answer)
    await channel.open()
    try:
        await _write(channel, b'{"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n'
                              b'{"jsonrpc":"2.0","id":1,"result":{}}\n')
        await _until(lambda: len(channel._inbox) >= 2)
        assert answered == []
        first, second = await channel.receive(), await channel.receive()
        assert first is not None and first["method"] == "notifications/progress"
        assert second == {"jsonrpc": "2.0", "id": 1, "result": {}}

        # the reader idle and nothing queued: the next answer goes straight to the waiting request
        reading = asyncio.ensure_future(channel.receive())
        await _until(lambda: channel._waiter is not None)
        await _write(channel, b'{"jsonrpc":"2.0","id":2,"result":{}}\n')
        await _until(lambda: bool(answered))
        assert answered == [{"jsonrpc": "2.0", "id": 2, "result": {}}] and not reading.done()
        await _write(channel, b'{"jsonrpc":"2.0","method":"later"}\n')
        later = await asyncio.wait_for(reading, 5)
        assert later is not None and later["method"] == "later"
    finally:
        await channel.close()


async def test_a_line_over_the_limit_ends_the_channel(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(stdio, "LINE_LIMIT", 1000)
    channel = _channel()
    await channel.open()
    try:
        await _write(channel, b'{"jsonrpc":"2.0","method":"a"}\n' + b"x" * 600)
        await _write(channel, b"y" * 600)
        first = await asyncio.wait_for(channel.receive(), 5)
        assert first is not None and first["method"] == "a"
        with caplog.at_level(logging.ERROR):
            assert await asyncio.wait_for(channel.receive(), 5) is None
        assert "over 1000 bytes" in caplog.text
    finally:
        await channel.close()


async def test_the_end_of_output_stays_the_end() -> None:
    channel = _channel()
    await channel.open()
    proc = channel._proc
    assert proc is not None and proc.stdin is not None
    await _write(channel, b'{"jsonrpc":"2.0","method":"last"}\n{"jsonrpc":"2.0","method":"torn"')
    proc.stdin.close()
    last = await asyncio.wait_for(channel.receive(), 5)
    assert last is not None and last["method"] == "last"
    assert await asyncio.wait_for(channel.receive(), 5) is None
    assert await asyncio.wait_for(channel.receive(), 5) is None  # a torn last line is not a message
    assert channel.exit_reason() == "exited with code 0"
    await channel.close()
