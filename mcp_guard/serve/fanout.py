"""What a session's stream must receive from another replica, through Redis pub/sub.

A caller holds each of its streams on one replica only, while a balancer without stickiness sends
its other requests anywhere.  With a ``redis://`` state store every replica subscribes to two
channels: one all replicas share (events for a session's ``GET`` stream: the approval page's
``elicitation/complete``, list changes, resource updates; every replica - the publisher included -
delivers them to the sessions it holds and drops the rest), and one of its own (answers to the
questions it put to its callers, forwarded by the replica they landed on, and the verdicts on the
answers it forwarded: questions.py).  A lost subscription is re-established and reported
(``on_lost``: a replica that cannot hear forwarded answers fails the questions waiting for them);
an event published while a replica was not subscribed is not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

log = logging.getLogger("mcp_guard.http")

CHANNEL = "mcp-guard:session-events"
REPLICA_CHANNEL = "mcp-guard:replica:"  # + a replica's id: what is addressed to that replica alone
RESUBSCRIBE_SECONDS = 1.0
COMMAND_SECONDS = 3.0  # a command Redis does not answer in this long fails (the listener itself waits forever)
MAX_WAITING = 1024  # forwarded answers waiting for a verdict at once; past it one is refused at once

Deliver = Callable[[Mapping[str, Any]], None]


class FanoutError(Exception):
    """Redis could not be reached: what needed it is refused with this sentence."""


class Fanout:
    """One replica's end of the channels: ``publish`` to all, ``ask`` one replica and wait for its
    ``reply``, ``deliver`` every event received; ``mark``/``take``/``unmark`` short-lived keys."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self._r = aioredis.Redis.from_url(url, socket_connect_timeout=3.0, decode_responses=True)
        self.replica = uuid.uuid4().hex  # this process: where what is addressed to it is published
        self.channel = REPLICA_CHANNEL + self.replica
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}  # nonce -> the verdict awaited
        self.subscribed = asyncio.Event()
        self.on_lost: Callable[[], None] | None = None  # the subscription broke: what waits for it cannot be heard

    def start(self, deliver: Deliver) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(deliver))

    async def _listen(self, deliver: Deliver) -> None:
        from redis.exceptions import RedisError

        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL, self.channel)
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        event = orjson.loads(message["data"])
                    except orjson.JSONDecodeError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    if event.get("event") == "verdict":
                        self._verdict(event)
                    else:
                        deliver(event)
            except (RedisError, OSError) as exc:
                log.warning("the session-event channel in %s failed (%s): subscribing again", self.url.split("@")[-1], exc)
            finally:
                self._lost()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    def _lost(self) -> None:
        was = self.subscribed.is_set()
        self.subscribed.clear()
        for future in self._waiting.values():  # no verdict can arrive any more
            if not future.done():
                future.set_result({"ok": False, "status": 503, "reason": "the replicas' channel was lost"})
        if was and self.on_lost is not None:
            self.on_lost()

    def _verdict(self, event: dict[str, Any]) -> None:
        future = self._waiting.get(str(event.get("nonce")))
        if future is not None and not future.done():
            future.set_result(event)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Send ``event`` to every replica (in the background: the caller is a synchronous callback)."""
        self._background(self._publish(CHANNEL, dict(event)))

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, channel: str, event: dict[str, Any]) -> int:
        try:
            return int(await asyncio.wait_for(self._r.publish(channel, orjson.dumps(event).decode()), COMMAND_SECONDS))
        except Exception as exc:  # the caller's retry still finds the answer in the store
            log.warning("could not publish a session event: %s", exc)
            return 0

    async def ask(self, replica: str, event: Mapping[str, Any], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """Send ``event`` to ``replica`` alone and wait for its verdict (``ok``, ``status``,
        ``reason``); a replica that cannot be reached or does not answer in time is a refusal."""
        if not self.subscribed.is_set():
            return {"ok": False, "status": 503, "reason": "the replicas' channel (Redis) is unreachable"}
        if len(self._waiting) >= MAX_WAITING:
            return {"ok": False, "status": 503, "reason": "too many answers are on their way to other replicas"}
        nonce = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = future
        try:
            sent = await self._publish(REPLICA_CHANNEL + replica, {**event, "nonce": nonce, "reply": self.replica})
            if not sent:
                return {"ok": False, "status": 503, "reason": "the replica that asked is not listening (gone, or Redis is unreachable)"}
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return {"ok": False, "status": 503, "reason": "the replica that asked did not take the answer in time"}
        finally:
            self._waiting.pop(nonce, None)

    def reply(self, event: Mapping[str, Any], verdict: Mapping[str, Any]) -> None:
        """Answer an ``ask`` (in the background)."""
        replica, nonce = event.get("reply"), event.get("nonce")
        if isinstance(replica, str) and isinstance(nonce, str) and len(replica) == 32:
            self._background(self._publish(REPLICA_CHANNEL + replica, {**verdict, "event": "verdict", "nonce": nonce}))

    async def mark(self, key: str, value: str, ttl: float) -> None:
        """Set a key that lives ``ttl`` seconds; FanoutError when Redis cannot be reached."""
        await self._command(self._r.set(key, value, px=max(1, int(ttl * 1000))))

    async def take(self, key: str) -> str | None:
        """Get and delete ``key`` at once (so only one taker gets it); FanoutError when Redis is unreachable."""
        value = await self._command(self._r.getdel(key))
        return value if isinstance(value, str) else None

    async def _command(self, command: Awaitable[Any]) -> Any:
        """One Redis command, bounded by ``COMMAND_SECONDS``."""
        try:
            return await asyncio.wait_for(command, COMMAND_SECONDS)
        except Exception as exc:  # the store's edge: any client failure becomes the one FanoutError callers refuse on
            raise FanoutError(f"the state store (Redis) is unreachable: {exc}") from None

    def unmark(self, key: str) -> None:
        """Delete ``key`` in the background (it expires anyway)."""

        async def delete() -> None:
            with contextlib.suppress(Exception):
                await self._r.delete(key)

        self._background(delete())

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


__all__ = ["CHANNEL", "REPLICA_CHANNEL", "Fanout", "FanoutError"]
