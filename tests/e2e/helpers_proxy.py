"""Helpers for the proxy end-to-end tests: result text, polling, and a raw JSON-RPC line client.

The SDK ``Client`` (``fixtures.guarded_session``) is the host for most tests; ``RawGuard`` is for
what an SDK client never sends (malformed lines, odd ids) and for byte-level comparisons of what
the guard writes on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mcp_types as t
from fixtures import guard_command, tools_env
from fixtures.inprocess import guard_in_memory

from mcp_guard.transports.memory import MemoryPeer

T = TypeVar("T")

LEGACY_INIT: dict[str, Any] = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "raw-host", "version": "1.0"},
}


def text(result: t.CallToolResult) -> str:
    """The text of a tool result's first block (every fixture tool answers with one text block)."""
    block = result.content[0]
    assert isinstance(block, t.TextContent), block
    return block.text


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, within: float = 20.0,
                     interval: float = 0.1) -> T:
    """Re-run ``probe`` until ``accept`` holds (for effects that arrive asynchronously, e.g. roots)."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


class RawGuard:
    """A guard driven line by line; every line it writes is kept in ``lines`` for checking.

    ``proc`` is the ``mcp-guard run`` process (``raw_guard(..., process=True)``), or None when the
    guard runs in this event loop over the in-memory pair (``peer``)."""

    def __init__(self, proc: asyncio.subprocess.Process | None, peer: MemoryPeer | None = None) -> None:
        self._proc = proc
        self.peer = peer
        self.lines: list[bytes] = []
        self.others: list[dict[str, Any]] = []  # notifications / requests seen while waiting for answers
        self._ids = itertools.count(1000)

    @property
    def proc(self) -> asyncio.subprocess.Process:
        assert self._proc is not None, "an in-process guard has no process: use raw_guard(..., process=True)"
        return self._proc

    async def send_line(self, line: bytes | str) -> None:
        data = line.encode() if isinstance(line, str) else line
        data = data if data.endswith(b"\n") else data + b"\n"
        if self.peer is not None:
            await self.peer.send_line(data)
            return
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.send_line(json.dumps(message))

    async def recv(self, within: float = 30.0) -> dict[str, Any]:
        """The next message the guard writes (any kind)."""
        if self.peer is not None:
            line = await asyncio.wait_for(self.peer.receive_line(), within)
        else:
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        assert line, "the guard closed its stdout"
        self.lines.append(line)
        message = json.loads(line)
        assert isinstance(message, dict), line
        return message

    async def answer(self, rid: Any, within: float = 30.0) -> dict[str, Any]:
        """Wait for the response to request ``rid``; other messages go to ``others``."""
        while True:
            message = await self.recv(within)
            if "method" not in message and message.get("id") == rid:
                return message
            self.others.append(message)

    async def request(self, method: str, params: Mapping[str, Any] | None = None, *,
                      rid: Any = None) -> dict[str, Any]:
        rid = next(self._ids) if rid is None else rid
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = dict(params)
        await self.send(message)
        return await self.answer(rid)

    async def initialize(self, capabilities: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = await self.request("initialize", {**LEGACY_INIT, "capabilities": dict(capabilities or {})})
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return response


@contextlib.asynccontextmanager
async def raw_guard(config: Path, *, stderr: Path | None = None, process: bool = False) -> AsyncIterator[RawGuard]:
    """A guard for ``config``, driven line by line: in this event loop over the in-memory pair, or
    ``mcp-guard run --config CONFIG`` with pipes when the test is about the process (``process``,
    its exit status; ``stderr``, its log).  Stops it (and only it) afterwards."""
    if not process and stderr is None and not os.environ.get("MCP_GUARD_TEST_PROCESSES"):
        async with guard_in_memory(config, env=tools_env()) as peer:
            yield RawGuard(None, peer)
        return
    errpath = stderr or config.parent / "guard.stderr"
    with open(errpath, "ab") as err:  # noqa: ASYNC230 - the child needs a real fd
        proc = await asyncio.create_subprocess_exec(
            *guard_command(config), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            env=tools_env(), cwd=config.parent, limit=64 * 1024 * 1024,
        )
    guard = RawGuard(proc)
    try:
        yield guard
    finally:
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
