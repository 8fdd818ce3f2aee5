"""A Streamable HTTP upstream, through the SDK's client transport (sessions, SSE, protocol headers).

The SDK transport yields validated ``SessionMessage`` objects; they are converted to and from the
guard's plain dicts at this edge only.  The upstream's credential comes from guard.yaml: static
``headers``, or the guard's own OAuth client (``auth:``, see ``oauth.py``).  The host's own token
is never passed through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter

from mcp_guard.config import UpstreamConfig
from mcp_guard.errors import UpstreamError
from mcp_guard.jsonrpc import Message
from mcp_guard.upstreams.oauth import GuardProvider, build_auth, http_client

log = logging.getLogger("mcp_guard.upstream")


class HttpChannel:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._write: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._reason = "was never started"
        self._stop = asyncio.Event()
        self._auth: GuardProvider | None = None

    async def open(self) -> None:
        self._auth = build_auth(self.config)  # may raise UpstreamError (an unreadable token key)
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._ready.wait()
        if self._write is None:
            raise UpstreamError(f"upstream {self.config.name} at {self.config.url} is unreachable: {self._reason}")

    async def _run(self) -> None:
        from mcp.client.streamable_http import streamable_http_client

        assert self.config.url is not None
        try:
            async with (
                http_client(self.config, self._auth) as http,
                streamable_http_client(self.config.url, http_client=http) as (read, write),
            ):
                self._write = write
                self._ready.set()
                reader = asyncio.ensure_future(self._pump(read))
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for t in (reader, stopper):
                    t.cancel()
        except Exception as exc:
            self._reason = str(exc) or type(exc).__name__
        finally:
            self._write = None
            self._ready.set()
            self._inbox.put_nowait(None)

    async def _pump(self, read: Any) -> None:
        async for item in read:
            if isinstance(item, Exception):
                log.warning("[%s] transport error: %s", self.config.name, item)
                if isinstance(item, ConnectionError | OSError):
                    self._reason = f"connection lost ({item})"
                continue
            self._inbox.put_nowait(item.message.model_dump(by_alias=True, mode="json", exclude_unset=True))
        self._reason = "closed the connection"

    async def send(self, message: Message) -> None:
        if self._write is None:
            raise UpstreamError(f"upstream {self.config.name} is not connected")
        try:
            await self._write.send(SessionMessage(jsonrpc_message_adapter.validate_python(message)))
        except Exception as exc:
            raise UpstreamError(f"upstream {self.config.name} could not be sent a message: {exc}") from None

    async def receive(self) -> Message | None:
        return await self._inbox.get()

    def exit_reason(self) -> str:
        if self._auth is not None and self._auth.failure:
            return str(self._auth.failure)
        return self._reason

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5.0)
