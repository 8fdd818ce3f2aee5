"""The streams of one HTTP request: where its messages wait (``Stream``), and the SSE response that
sends them (``EventStream``).  A request is answered with plain JSON, or with an SSE stream when the
caller accepts one and something else about the request comes first."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from mcp_guard.jsonrpc import Message
from mcp_guard.serve.drain import RETRY_MS

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

log = logging.getLogger("mcp_guard.http")

KEEPALIVE: Message = {}  # no event for a while: an SSE comment keeps the stream open through proxies
RETRY: Message = {}  # the guard drains: the stream ends with an SSE ``retry:`` hint (reconnect elsewhere)
KEEPALIVE_SECONDS = 15.0
MAX_QUEUED = 1024  # events waiting for a slow reader; past it notifications are dropped, questions refused


class Stream:
    """Where one caller request's messages go: its answer, and, when the caller accepts
    ``text/event-stream``, what the session sends while serving it (progress, log messages,
    an upstream's questions, listen notifications).  The GET stream is a ``Stream`` with no answer."""

    def __init__(self, sse: bool, *, answered: bool = True, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()  # Python 3.11 makes a getpid system call for each lookup
        self.answer: asyncio.Future[Message] = loop.create_future()
        self.wake: asyncio.Future[None] = loop.create_future()  # the answer or a first event is there
        self.answered = answered  # False: the GET stream, never answered, ends when its session does
        self.sse = sse
        self.events: asyncio.Queue[Message | None] | None = None  # made at the first event (most answers have none)
        self.asked: set[Any] = set()  # requests sent to the caller on this stream, not yet answered
        self.token: Any = None  # the caller's progress token for this request
        self.finished = False

    def queue(self) -> asyncio.Queue[Message | None]:
        if self.events is None:
            self.events = asyncio.Queue(MAX_QUEUED)
        return self.events

    def put(self, message: Message) -> bool:
        """Queue an event; False when this stream cannot carry it (plain JSON, ended, or full)."""
        if not self.sse or self.finished:
            return False
        try:
            self.queue().put_nowait(message)
        except asyncio.QueueFull:
            log.info("a caller reads its event stream too slowly: %s dropped", message.get("method"))
            return False
        if not self.wake.done():
            self.wake.set_result(None)
        return True

    def end(self, retry: bool = False) -> None:
        """No more events; ``retry``: tell the client when to reconnect first (the guard drains)."""
        if self.sse and not self.finished:
            with contextlib.suppress(asyncio.QueueFull):
                if retry:
                    self.queue().put_nowait(RETRY)
                self.queue().put_nowait(None)

    def resolve(self, answer: Message) -> None:
        if not self.answer.done():
            self.answer.set_result(answer)
        if not self.wake.done():
            self.wake.set_result(None)

    async def first(self) -> bool:
        """Wait for the answer or the first event: True if an event came first (answer with SSE)."""
        await self.wake
        return self.events is not None and not self.events.empty()

    async def next(self) -> Message | None:
        """The next event, the answer (last), ``KEEPALIVE`` after a quiet while, or None: ended."""
        if self.finished:
            return None
        events = self.queue()
        answer = self.answer if self.answered else None
        if events.empty() and answer is not None and answer.done():
            self.finished = True
            return answer.result()
        getter = asyncio.ensure_future(events.get())
        waiting: list[asyncio.Future[Any]] = [getter] if answer is None else [getter, answer]
        try:
            await asyncio.wait(waiting, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            event = getter.result()
            if event is None:
                self.finished = True
            return event
        if answer is not None and answer.done():
            return await self.next()
        return KEEPALIVE

class JsonAnswer(Response):
    """A JSON-RPC answer as plain JSON: Starlette's ``Response``, its head made directly (the same
    lines: the given headers, ``content-length``, ``content-type: application/json``)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else []
        raw += ((b"content-length", b"%d" % len(body)), (b"content-type", b"application/json"))
        self.raw_headers = raw


class EventStream:
    """An SSE response: one ``message`` event per JSON-RPC message until the stream ends; the
    caller hanging up ends it too (``on_close`` then cleans up: cancellation, unanswered questions)."""

    def __init__(self, next_event: Callable[[], Awaitable[Message | None]], on_close: Callable[[bool], Awaitable[None]],
                 headers: dict[str, str], rewrite: Callable[[Message], Message] = lambda m: m) -> None:
        self.next_event = next_event
        self.on_close = on_close
        self.headers = headers
        self.rewrite = rewrite

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
                   (b"x-accel-buffering", b"no")]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        completed = False

        async def pump() -> None:
            nonlocal completed
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while (event := await self.next_event()) is not None:
                if event is RETRY:
                    body = f"retry: {RETRY_MS}\n\n".encode()
                else:
                    body = b": keep-alive\n\n" if event is KEEPALIVE else b"event: message\ndata: " + orjson.dumps(self.rewrite(event)) + b"\n\n"
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            completed = True

        async def hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(hang_up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.on_close(not completed)

@functools.lru_cache(maxsize=64)  # a client sends the same Accept on every request
def accepts_sse(accept: str) -> tuple[bool, bool]:
    """(accepts ``text/event-stream``, prefers it): preferred when listed before ``application/json``
    or without it, so a caller that asks for JSON first gets JSON whenever the answer is all there is."""
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if "text/event-stream" not in kinds:
        return False, False
    json_at = next((i for i, k in enumerate(kinds) if k in ("application/json", "application/*", "*/*")), len(kinds))
    return True, kinds.index("text/event-stream") < json_at
