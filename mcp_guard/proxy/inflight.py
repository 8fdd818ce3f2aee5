"""One session's host requests in flight: the task answering each, and where each went upstream.

The pump registers a request's task when it starts it and forgets the request once answered.
What is kept here answers three questions: what to cancel when the host sends
``notifications/cancelled`` (the task, and the forwarded request upstream under the upstream's own
id); which host request something an upstream sends belongs to (``request_on``, ``on_behalf``:
a transport with a stream per request sends it there); and what is left to wait for when the host
closes its input (``drain``) or the session ends (``close``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection
from typing import Any

from mcp_guard.jsonrpc import RELATED_REQUEST, Message
from mcp_guard.upstreams.connection import Upstream


class Inflight:
    """The request-id tables of one session (host request ids are the host's own)."""

    def __init__(self) -> None:
        self.tasks: dict[Any, asyncio.Task[None]] = {}  # host request id -> the task answering it
        self.upstream_ids: dict[Any, tuple[Upstream, int]] = {}  # host request id -> where it went

    def begin(self, rid: Any, task: asyncio.Task[None]) -> None:
        self.tasks[rid] = task

    def track(self, rid: Any, upstream: Upstream, upstream_id: int) -> None:
        """The host request ``rid`` was forwarded to ``upstream`` as its request ``upstream_id``."""
        self.upstream_ids[rid] = (upstream, upstream_id)

    def where(self, rid: Any) -> tuple[Upstream, int] | None:
        """The upstream (and its request id) the host request ``rid`` went to, while it is served."""
        return self.upstream_ids.get(rid)

    def end(self, rid: Any) -> None:
        """The host request ``rid`` was answered (or cancelled): nothing of it is kept."""
        self.tasks.pop(rid, None)
        self.upstream_ids.pop(rid, None)

    async def cancel(self, rid: Any, params: Message) -> None:
        """The host cancelled ``rid``: the upstream hears it under its own request id, and the task
        stops without an answer."""
        where = self.upstream_ids.pop(rid, None)
        if where is not None:
            upstream, upstream_id = where
            await upstream.notify("notifications/cancelled", {**params, "requestId": upstream_id})
        task = self.tasks.pop(rid, None)
        if task is not None:
            task.cancel()

    def request_on(self, upstream: Upstream) -> Any:
        """The host request (the latest) in flight on ``upstream``, or None."""
        return next((rid for rid, (up, _) in reversed(self.upstream_ids.items()) if up is upstream), None)

    async def on_behalf(self, upstream: Upstream, work: Awaitable[None]) -> None:
        """Run what ``upstream`` sent with the request in flight on it as the related request, so a
        transport with a stream per request sends the outcome there."""
        token = RELATED_REQUEST.set(self.request_on(upstream))
        try:
            await work
        finally:
            RELATED_REQUEST.reset(token)

    async def drain(self, grace: float, hung_up: Awaitable[None], endless: Collection[Any] = ()) -> None:
        """The host closed its input: let requests already received finish, for at most ``grace`` s,
        or until ``hung_up`` says the host closed its output too (nobody is left to answer).  The
        ``endless`` requests (open listens) never finish on their own: they are cancelled."""
        pending: list[asyncio.Future[Any]] = [t for rid, t in self.tasks.items() if not t.done() and rid not in endless]
        for rid in list(endless):
            if (task := self.tasks.get(rid)) is not None:
                task.cancel()
        gone: asyncio.Future[Any] = asyncio.ensure_future(hung_up)
        try:
            if pending:
                finished: asyncio.Future[Any] = asyncio.gather(*pending, return_exceptions=True)
                await asyncio.wait([finished, gone], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()

    def close(self) -> None:
        """The session ended: every request still running stops unanswered."""
        for task in list(self.tasks.values()):
            task.cancel()


__all__ = ["Inflight"]
