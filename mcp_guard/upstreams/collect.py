"""Connect to every configured upstream once, just to read its tool definitions (``mcp-guard pin``)."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp_guard.config import GuardConfig
from mcp_guard.jsonrpc import Message
from mcp_guard.upstreams.connection import Status, Upstream


class _Quiet:
    """An upstream handler for a short read-only visit: nothing is relayed anywhere."""

    async def upstream_request(self, upstream: Upstream, message: Message) -> None:
        await upstream.refuse(message["id"], "mcp-guard pin does not answer requests")

    async def upstream_notification(self, upstream: Upstream, message: Message) -> None:
        return None

    async def upstream_changed(self, upstream: Upstream) -> None:
        return None


async def collect_tools(config: GuardConfig) -> tuple[dict[str, list[Message]], dict[str, str]]:
    """``(upstream -> tool definitions, upstream -> why it could not be read)``."""
    handler: Any = _Quiet()
    upstreams = [Upstream(cfg, handler) for cfg in config.upstreams.values()]
    try:
        await asyncio.gather(*(u.start({}) for u in upstreams))
        tools = {u.name: list(u.tools) for u in upstreams if u.status == Status.READY}
        failed = {u.name: u.last_error or f"upstream {u.name} did not start" for u in upstreams if u.status != Status.READY}
        return tools, failed
    finally:
        await asyncio.gather(*(u.close() for u in upstreams), return_exceptions=True)
