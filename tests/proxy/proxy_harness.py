"""Drive a ``GuardSession`` in-process: a host transport that collects what the guard sends.

The upstreams are real (the recording server as a child process); only the host side is in
memory, so wire-level properties (exact bytes, pagination cursors, malformed input) are cheap to
check without a guard subprocess in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fixtures import ALLOW_ALL, write_guard_config

from mcp_guard.config import load_config
from mcp_guard.jsonrpc import Message, dumps
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.reload import load_policy_set
from mcp_guard.proxy.session import GuardSession
from mcp_guard.state.memory import MemoryStore

MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "fake-host", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class FakeHost:
    """The host side of one session: ``request`` sends and waits for the answer with that id."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[Message] = asyncio.Queue()
        self.others: list[Message] = []
        self.session: GuardSession | None = None
        self._ids = itertools.count(1)
        self.modern = False

    async def send(self, message: Message) -> None:  # HostTransport
        dumps(message)  # everything the guard sends must serialise
        await self.sent.put(message)

    async def next(self, within: float = 30.0) -> Message:
        return await asyncio.wait_for(self.sent.get(), within)

    async def handle(self, message: Any) -> None:
        assert self.session is not None
        await self.session.handle(message)

    async def request(self, method: str, params: Mapping[str, Any] | None = None, *, rid: Any = None) -> Message:
        rid = next(self._ids) if rid is None else rid
        message: Message = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None or self.modern:
            message["params"] = dict(params or {})
            if self.modern:
                message["params"]["_meta"] = dict(MODERN_META)
        await self.handle(message)
        while True:
            answer = await self.next()
            if "method" not in answer and answer.get("id") == rid:
                return answer
            self.others.append(answer)

    async def initialize(self) -> Message:
        answer = await self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                   "clientInfo": {"name": "fake-host", "version": "1"}})
        await self.handle({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    async def discover(self) -> Message:
        self.modern = True
        return await self.request("server/discover")

    def pending(self) -> list[Message]:
        """Whatever the guard sent that nobody has read yet."""
        out = []
        while not self.sent.empty():
            out.append(self.sent.get_nowait())
        return out


@contextlib.asynccontextmanager
async def guard_session(tmp_path: Path, upstreams: Mapping[str, Mapping[str, Any]],
                        policies: Sequence[Mapping[str, Any]] = ALLOW_ALL, **extra: Any) -> AsyncIterator[FakeHost]:
    """A GuardSession over a real guard.yaml (written to tmp_path), with a FakeHost attached."""
    config = load_config(write_guard_config(tmp_path, upstreams, policies, **extra))
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=MemoryStore())
    host = FakeHost()
    session = GuardSession(ctx, host)
    host.session = session
    try:
        yield host
    finally:
        await session.close()
