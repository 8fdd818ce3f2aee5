"""One HTTP session's host side (``ReplyHost``): what its guard session sends goes to the stream of
the caller request it belongs to, or to the session's ``GET`` stream."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    META_SUBSCRIPTION_ID,
    RELATED_REQUEST,
    Message,
    error,
)
from mcp_guard.proxy.relay import progress_token
from mcp_guard.serve.streams import Stream

log = logging.getLogger("mcp_guard.http")

REQUEST_CANCELLED = -32800
# what a session's GET stream receives that one replica may produce for a stream another holds
STREAM_NOTICES = frozenset({"notifications/tools/list_changed", "notifications/prompts/list_changed",
                            "notifications/resources/list_changed", "notifications/resources/updated"})


class HostSession(Protocol):
    """One caller's guard session, as the transport drives it."""

    id: str  # this replica's id of the session
    key: str  # its name on every replica (what audit records and approval requests record as their ``session``)

    async def handle(self, message: Any) -> None: ...
    async def close(self) -> None: ...


class ReplyHost:
    """One HTTP session's host side: routes each message its guard session sends to the stream of
    the caller request it belongs to (by id, progress token, subscription id or the related
    request), or to the session's GET stream; what has nowhere to go is dropped, and a question
    for the caller that has nowhere to go is answered with an error at once (nothing waits)."""

    def __init__(self) -> None:
        self.session: HostSession | None = None
        self._open: dict[Any, Stream] = {}  # inner request id -> its stream
        self._inner: dict[Any, str] = {}  # the caller's request id -> the id the session knows it by
        self._tokens: dict[Any, str] = {}  # the caller's progress token -> inner request id
        self._asked: dict[Any, Stream] = {}  # request to the caller (session's id) -> the stream it went on
        self.listener: Stream | None = None  # GET stream
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None  # found once: each lookup is a system call on Python 3.11
        # replicas (questions.py): record a question before it goes out (None, or why it cannot be
        # asked), and drop the record once it is answered or can no longer be
        self.share: Callable[[Any], Awaitable[str | None]] | None = None
        self.settle: Callable[[Any], None] | None = None
        self.elsewhere: Callable[[Message], None] | None = None  # a GET-stream notice with no GET stream here

    async def send(self, message: Message) -> None:
        if "method" not in message:  # an answer to a caller request
            stream = self._open.get(message.get("id"))
            if stream is not None:
                stream.resolve(message)
            return
        if "id" in message:  # a question from an upstream, put to this caller
            stream = self._related()
            refusal = await self.share(message["id"]) if stream is not None and self.share is not None else None
            if stream is None or refusal is not None or not stream.put(message):
                if refusal is None and stream is not None and self.settle is not None:
                    self.settle(message["id"])
                await self._unanswerable(message, refusal)
                return
            stream.asked.add(message["id"])
            self._asked[message["id"]] = stream
            return
        target = self._notification_stream(message)
        if target is None and self.listener is None and self.elsewhere is not None and message.get("method") in STREAM_NOTICES:
            self.elsewhere(message)  # for the GET stream, which another replica may hold
        elif target is None or not target.put(message):
            log.debug("no stream for %s", message.get("method"))

    def _related(self) -> Stream | None:
        inner = RELATED_REQUEST.get()
        stream = self._open.get(inner) if inner is not None else None
        if stream is not None and stream.sse:
            return stream
        return self.listener

    def _notification_stream(self, message: Message) -> Stream | None:
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/progress":
            inner = self._tokens.get(params.get("progressToken"))
            return self._open.get(inner) if inner is not None else None
        meta = params.get("_meta")
        if isinstance(meta, dict) and META_SUBSCRIPTION_ID in meta:  # on its subscriptions/listen stream
            return self._open.get(meta[META_SUBSCRIPTION_ID])
        if method == "notifications/message":
            return self._related()
        return self.listener

    async def _unanswerable(self, message: Message, reason: str | None = None) -> None:
        if self.session is not None:
            await self.session.handle(error(message["id"], INTERNAL_ERROR, f"the caller cannot be asked {message.get('method')}: "
                                            + (reason or "it has no open stream to be asked on")))

    async def fail_questions(self, reason: str) -> None:
        """Every question still waiting fails at once (``reason``): its answer could not reach this replica."""
        for hid, stream in list(self._asked.items()):
            stream.asked.discard(hid)
            del self._asked[hid]
            if self.session is not None:
                await self.session.handle(error(hid, INTERNAL_ERROR, reason))

    def answered(self, message: Message) -> bool:
        """A response POSTed by the caller: True if it answers a question asked on one of its streams."""
        stream = self._asked.pop(message.get("id"), None)
        if stream is None:
            return False
        stream.asked.discard(message.get("id"))
        if self.settle is not None:
            self.settle(message.get("id"))
        return True

    def open(self, message: Message, sse: bool) -> tuple[str, Stream]:
        """Register a caller request under an id unique to this host."""
        inner = f"h{next(self._ids)}"
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        stream = Stream(sse, loop=self._loop)
        self._open[inner] = stream
        self._inner[message["id"]] = inner
        params = message.get("params")
        token = progress_token(params) if isinstance(params, dict) else None
        if token is not None:
            self._tokens[token] = inner
            stream.token = token
        return inner, stream

    async def finish(self, original: Any, inner: str, stream: Stream, *, cancel: bool) -> None:
        """The request's stream is done (answered, or the caller went away: then it is cancelled)."""
        stream.finished = True
        self._open.pop(inner, None)
        if self._inner.get(original) == inner:
            del self._inner[original]
        if stream.token is not None and self._tokens.get(stream.token) == inner:
            del self._tokens[stream.token]
        await self._drop_questions(stream)
        if cancel and not stream.answer.done() and self.session is not None:
            # the HTTP caller went away: stop the work it asked for (upstream call, approval wait, listen)
            await self.session.handle({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                       "params": {"requestId": inner, "reason": "the caller closed the stream"}})

    async def _drop_questions(self, stream: Stream) -> None:
        """Questions asked on a stream that closed can no longer be answered: the upstream is told so."""
        for hid in list(stream.asked):
            self._asked.pop(hid, None)
            if self.settle is not None:
                self.settle(hid)
            if self.session is not None:
                await self.session.handle(error(hid, INTERNAL_ERROR, "the caller closed the stream before answering"))
        stream.asked.clear()

    async def close_listener(self, stream: Stream) -> None:
        if self.listener is stream:
            self.listener = None
        stream.finished = True
        await self._drop_questions(stream)

    def abort(self, reason: str) -> None:
        """The session is closing: answer every request still waiting, so no POST hangs."""
        for inner, stream in list(self._open.items()):
            stream.resolve(error(inner, INVALID_REQUEST, reason))
        if self.listener is not None:
            self.listener.end()

    async def cancel(self, session: HostSession, message: Message) -> None:
        """``notifications/cancelled`` for a request still open on another POST: cancel it in the
        session and close that POST with a JSON-RPC error (an HTTP request needs an answer)."""
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        inner = self._inner.get(params.get("requestId"))
        if inner is None:
            return  # unknown or already answered: nothing to do (the spec allows the race)
        await session.handle({**message, "params": {**params, "requestId": inner}})
        stream = self._open.get(inner)
        if stream is not None:
            stream.resolve(error(inner, REQUEST_CANCELLED, "Request cancelled"))

