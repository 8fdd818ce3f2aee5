"""The Redis store's revocation signal by publish/subscribe: no query per call while subscribed.

``revoke`` publishes on ``mcp-guard:revoked:changed`` in the same script that adds the revocation;
every guard process keeps one subscription (a task of its event loop) and counts the messages.
While the subscription is up, the signal is that count plus the version read last, and the
version key is read again only every ``RECHECK`` seconds (a safety net for a revocation written
without a message, e.g. by an older mcp-guard, or a message lost with a dropped connection).
While it is down, or not yet confirmed, every call reads the version key as before, so an
unreachable Redis refuses the call (fail closed); a subscription that comes (back) up moves the
signal, since messages sent while it was down are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("mcp_guard.state")

CHANNEL = "mcp-guard:revoked:changed"
RECHECK = 1.0  # seconds between reads of the version key while subscribed: the bound when a message is lost
RETRY = (0.05, 1.0)  # first and longest pause before subscribing again after the subscription failed
_WATCHES: dict[str, weakref.WeakSet[RevocationWatch]] = {}  # every watch of this process, by Redis URL


class RevocationWatch:
    """The subscription of one process, started by the first ``signal()`` in its event loop."""

    def __init__(self, url: str, client: Any, read_version: Callable[[], Awaitable[Hashable]],
                 recheck: float = RECHECK) -> None:
        _WATCHES.setdefault(url, weakref.WeakSet()).add(self)
        self.url = url
        self._client = client
        self._read_version = read_version
        self.recheck = recheck
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.live = False  # subscribed and confirmed: messages will arrive
        self._generation = 0  # moves with every message, every (re)subscription and every own revocation
        self._version: Hashable = None
        self._checked = -float("inf")

    async def signal(self) -> Hashable:
        """What moves when a revocation may have been written; reads Redis only when not subscribed
        or every ``recheck`` seconds (raises StateError when that read fails)."""
        self._start()
        now = time.monotonic()
        if not self.live or now - self._checked >= self.recheck:
            self._version = await self._read_version()
            self._checked = now
        return (self._generation, self._version)

    def moved(self) -> None:
        """This process revoked: the next call of every store of it on this Redis must not wait for the message."""
        for watch in list(_WATCHES.get(self.url, ())):
            watch._generation += 1

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self.live = False
        self._loop = loop
        self._task = loop.create_task(self._listen(), name="mcp-guard revocation subscription")

    async def _listen(self) -> None:
        pause = RETRY[0]
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=self.recheck)
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        self._generation += 1  # what was published while we were not listening is lost
                        self.live = True
                        pause = RETRY[0]
                    elif message.get("type") == "message":
                        self._generation += 1
            except (RedisError, OSError) as exc:
                if self.live:
                    log.warning("the revocation subscription to Redis was lost (%s); reading the version on every call", exc)
                self.live = False
            finally:
                self.live = False
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY[1])

    async def close(self) -> None:
        task, self._task = self._task, None
        self.live = False
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
