"""What a session's stream must receive from another replica, through Redis pub/sub.

The approval page may be answered on any replica, while the caller that was pointed at it holds
its ``GET /mcp`` stream on one replica only.  With a ``redis://`` state store every replica
publishes such an event on one channel and every replica - the publisher included - delivers it
to the sessions it holds; a replica that holds none of them drops it.  Events carry ids only
(approval id, guard session id, page binding digest): nothing a subscriber could act on beyond
telling its own caller that an approval was answered.  A lost subscription is re-established;
an event published while a replica was not subscribed is not replayed (the caller's retry finds
the answer in the store all the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

log = logging.getLogger("mcp_guard.http")

CHANNEL = "mcp-guard:session-events"
RESUBSCRIBE_SECONDS = 1.0

Deliver = Callable[[Mapping[str, Any]], None]


class Fanout:
    """One replica's end of the channel: ``publish`` an event, ``deliver`` every event received."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self._r = aioredis.Redis.from_url(url, socket_connect_timeout=3.0, decode_responses=True)
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.subscribed = asyncio.Event()

    def start(self, deliver: Deliver) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(deliver))

    async def _listen(self, deliver: Deliver) -> None:
        from redis.exceptions import RedisError

        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        event = orjson.loads(message["data"])
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(event, dict):
                        deliver(event)
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("the session-event channel in %s failed (%s): subscribing again", self.url.split("@")[-1], exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Send ``event`` to every replica (in the background: the caller is a synchronous callback)."""
        task = asyncio.get_running_loop().create_task(self._publish(dict(event)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, event: dict[str, Any]) -> None:
        try:
            await self._r.publish(CHANNEL, orjson.dumps(event).decode())
        except Exception as exc:  # the caller's retry still finds the answer in the store
            log.warning("could not publish a session event: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for task in list(self._sending):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2)
        with contextlib.suppress(Exception):
            await self._r.aclose()


__all__ = ["CHANNEL", "Fanout"]
