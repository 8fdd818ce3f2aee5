"""``mcp-guard serve``: the guard as a Streamable HTTP MCP server at ``/mcp``.

Every POST must carry ``Authorization: Bearer <token>``: an OAuth access token (JWT) from an
issuer in ``serve.oauth``, or one of the guard's own grant chains.  The verified token is the
caller's identity; the token itself never goes further than this module.  A handshake-era client
gets an ``Mcp-Session-Id`` bound to its identity; a 2026-07-28 client is served statelessly, one
guard session per identity.  A session is bound to the whole verified principal and every request
on it is checked against it (``serve.binding``).  Sessions are capped per principal (its own
oldest goes), per delegating root and in all (refused past either); they expire when idle, so one
caller can never push out another's.  All sessions share one set of upstream connections.
A request is answered with plain JSON, or with an SSE stream when the caller accepts one and
something else about the request comes first (progress, log messages, an upstream's question):
what the guard session sends is routed to the stream of the request it belongs to, or to the
session's ``GET`` stream (list changes, resource updates).  Approvals go only through the queue
(``mcp-guard approvals``) or the approval page (``serve.approvals``), never through a channel the
caller holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.config import ServeConfig
from mcp_guard.grants import ChainVerifier, GrantChain, GrantError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    META_SUBSCRIPTION_ID,
    PARSE_ERROR,
    RELATED_REQUEST,
    HostTransport,
    Message,
    error,
    is_request,
)
from mcp_guard.proxy.relay import progress_token
from mcp_guard.serve.admin import healthz
from mcp_guard.serve.binding import principal_key, root_key, session_binding, store_key
from mcp_guard.serve.drain import RETRY_MS, Drain, listener, run_listeners
from mcp_guard.serve.oauth import OAuthError, OAuthVerifier
from mcp_guard.serve.questions import Questions
from mcp_guard.serve.session_records import binding_digest
from mcp_guard.serve.session_state import REPLAY, SESSION_STATE, changed, replays

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from mcp_guard.serve.admin import Admin
    from mcp_guard.serve.approval_page import ApprovalPage
    from mcp_guard.serve.exchange import TokenExchange
    from mcp_guard.serve.fanout import Fanout
    from mcp_guard.serve.session_records import SessionRecords

log = logging.getLogger("mcp_guard.http")

HEADER_MISMATCH = -32020
REQUEST_CANCELLED = -32800
LOCAL_ORIGIN = re.compile(r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$")
WELL_KNOWN = "/.well-known/oauth-protected-resource"


class HostSession(Protocol):
    """One caller's guard session, as the transport drives it."""

    id: str  # the guard's id of the session (what approval requests record as their ``session``)

    async def handle(self, message: Any) -> None: ...
    async def close(self) -> None: ...


class Sessions(Protocol):
    """What serving needs from the guard: its shared upstreams, and a new session per caller whose
    principal is the verified token's and whose limits count by ``limit_scope`` (the principal)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def new(self, host: HostTransport, chain: GrantChain | None, principal: Principal, limit_scope: str) -> HostSession: ...

    def refused(self, principal: Principal, method: str | None, reason: str, session: str | None = None) -> None:
        """Audit a request the transport refused before any session handled it."""
        ...


_KEEPALIVE: Message = {}  # no event for a while: an SSE comment keeps the stream open through proxies
_RETRY: Message = {}  # the guard drains: the stream ends with an SSE ``retry:`` hint (reconnect elsewhere)
KEEPALIVE_SECONDS = 15.0
# what a session's GET stream receives that one replica may produce for a stream another holds
STREAM_NOTICES = frozenset({"notifications/tools/list_changed", "notifications/prompts/list_changed",
                            "notifications/resources/list_changed", "notifications/resources/updated"})
MAX_QUEUED = 1024  # events waiting for a slow reader; past it notifications are dropped, questions refused


class _Stream:
    """Where one caller request's messages go: its answer, and, when the caller accepts
    ``text/event-stream``, what the session sends while serving it (progress, log messages,
    an upstream's questions, listen notifications).  The GET stream is a ``_Stream`` with no answer."""

    def __init__(self, sse: bool, *, answered: bool = True) -> None:
        loop = asyncio.get_running_loop()
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
                    self.queue().put_nowait(_RETRY)
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
        """The next event, the answer (last), ``_KEEPALIVE`` after a quiet while, or None: ended."""
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
        return _KEEPALIVE


class _ReplyHost:
    """One HTTP session's host side: routes each message its guard session sends to the stream of
    the caller request it belongs to (by id, progress token, subscription id or the related
    request), or to the session's GET stream; what has nowhere to go is dropped, and a question
    for the caller that has nowhere to go is answered with an error at once (nothing waits)."""

    def __init__(self) -> None:
        self.session: HostSession | None = None
        self._open: dict[Any, _Stream] = {}  # inner request id -> its stream
        self._inner: dict[Any, str] = {}  # the caller's request id -> the id the session knows it by
        self._tokens: dict[Any, str] = {}  # the caller's progress token -> inner request id
        self._asked: dict[Any, _Stream] = {}  # request to the caller (session's id) -> the stream it went on
        self.listener: _Stream | None = None  # GET stream
        self._ids = itertools.count(1)
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

    def _related(self) -> _Stream | None:
        inner = RELATED_REQUEST.get()
        stream = self._open.get(inner) if inner is not None else None
        if stream is not None and stream.sse:
            return stream
        return self.listener

    def _notification_stream(self, message: Message) -> _Stream | None:
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

    def open(self, message: Message, sse: bool) -> tuple[str, _Stream]:
        """Register a caller request under an id unique to this host."""
        inner = f"h{next(self._ids)}"
        stream = _Stream(sse)
        self._open[inner] = stream
        self._inner[message["id"]] = inner
        params = message.get("params")
        token = progress_token(params) if isinstance(params, dict) else None
        if token is not None:
            self._tokens[token] = inner
            stream.token = token
        return inner, stream

    async def finish(self, original: Any, inner: str, stream: _Stream, *, cancel: bool) -> None:
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

    async def _drop_questions(self, stream: _Stream) -> None:
        """Questions asked on a stream that closed can no longer be answered: the upstream is told so."""
        for hid in list(stream.asked):
            self._asked.pop(hid, None)
            if self.settle is not None:
                self.settle(hid)
            if self.session is not None:
                await self.session.handle(error(hid, INTERNAL_ERROR, "the caller closed the stream before answering"))
        stream.asked.clear()

    async def close_listener(self, stream: _Stream) -> None:
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


class _EventStream:
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
                if event is _RETRY:
                    body = f"retry: {RETRY_MS}\n\n".encode()
                else:
                    body = b": keep-alive\n\n" if event is _KEEPALIVE else b"event: message\ndata: " + orjson.dumps(self.rewrite(event)) + b"\n\n"
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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from, as proven by its bearer token."""

    principal: Principal
    chain: GrantChain | None
    binding: str  # what a session is bound to: the whole principal (and a grant chain's token)
    issuer: str | None = None  # the OAuth issuer, None for a grant chain
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        """The principal's user and agent chain: what ``max_sessions_per_principal`` counts."""
        return principal_key(self.principal)

    @property
    def owner_id(self) -> str:
        """A short, store-safe key for the principal (limits in the state store)."""
        return store_key(self.owner)

    @property
    def root(self) -> str:
        """The delegating root: what ``max_sessions_per_root`` counts."""
        return root_key(self.issuer, self.principal, self.chain)


@dataclass
class _Session:
    key: str  # "sid:<Mcp-Session-Id>" or "id:<binding>" (2026-07-28, one per caller)
    session: HostSession
    host: _ReplyHost
    binding: str
    owner: str
    root: str
    used: float
    busy: int = 0
    initialize: Message | None = None  # the handshake, kept to refresh the shared record (session_records.py)
    initialized: bool = False  # the session heard `notifications/initialized` (shared records: from this replica)
    state: Message = field(default_factory=dict)  # what the caller changed since the handshake (session_state.py)

    async def close(self, reason: str) -> None:
        self.host.abort(reason)
        await self.session.close()


def _accepts_sse(accept: str) -> tuple[bool, bool]:
    """(accepts ``text/event-stream``, prefers it): preferred when listed before ``application/json``
    or without it, so a caller that asks for JSON first gets JSON whenever the answer is all there is."""
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if "text/event-stream" not in kinds:
        return False, False
    json_at = next((i for i, k in enumerate(kinds) if k in ("application/json", "application/*", "*/*")), len(kinds))
    return True, kinds.index("text/event-stream") < json_at
MCP_METHODS = ("GET", "POST", "DELETE")  # what the MCP endpoint answers (others: 405 from the router)


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def resource_metadata_url(resource: str) -> str:
    """RFC 9728: the well-known URI is inserted between the host and the resource's path."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{parts.path.rstrip('/')}"


class HttpGuard:
    def __init__(
        self,
        sessions: Sessions,
        verifier: ChainVerifier,
        *,
        config: ServeConfig | None = None,
        chain_issuers: frozenset[str] = frozenset(),
        allowed_origins: tuple[str, ...] = (),
        oauth: OAuthVerifier | None = None,
        exchange: TokenExchange | None = None,
        listen: tuple[str, int] | None = None,
        page: ApprovalPage | None = None,
    ) -> None:
        self.guard = sessions
        self.verifier = verifier
        self.chain_issuers = chain_issuers  # trust.issuers: a JWT naming one of these is a grant chain
        self.oauth = oauth
        self.exchange = exchange
        self.allowed_origins = allowed_origins
        self.serve = config or ServeConfig()
        self.allowed_hosts = self._allowed_hosts(listen)
        self.entries: dict[str, _Session] = {}  # _Session.key -> session
        self.owned: dict[str, OrderedDict[str, None]] = {}  # principal -> its entry keys, LRU order
        self.rooted: dict[str, int] = {}  # delegating root -> how many sessions its principals hold
        self.by_session_id: dict[str, _Session] = {}  # HostSession.id -> its entry (the approval page's notices)
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False  # SIGTERM: new requests are refused with 503, what is in flight finishes
        self.records: SessionRecords | None = None  # shared session records: any replica serves any session
        self.fanout: Fanout | None = None  # redis://: session events reach the replica holding the stream
        self.questions: Questions | None = None  # redis://: answers reach the replica that asked (made at start)
        self._adopting: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Future[None]] = set()  # background work kept referenced (session state)
        self.mcp_path = "/mcp"
        routes = [Route(self.mcp_path, self.endpoint, methods=list(MCP_METHODS)), Route("/healthz", healthz, methods=["GET"])]
        if oauth is not None:
            public = urlsplit(self.serve.url).path.rstrip("/") if self.serve.url else ""  # may differ behind a reverse proxy
            for path in dict.fromkeys((WELL_KNOWN + self.mcp_path, WELL_KNOWN + public, WELL_KNOWN)):
                routes.append(Route(path, self.metadata, methods=["GET"]))
        if exchange is not None:
            routes.append(Route("/token", self.token, methods=["POST"]))
        if page is not None:
            routes.extend(page.routes())
            page.on_answered = self._page_answered
        self.app: ASGIApp = Starlette(routes=routes)

    def _allowed_hosts(self, listen: tuple[str, int] | None) -> frozenset[str] | None:
        """``Host`` values this guard answers to (DNS-rebinding protection); None = not checked."""
        hosts = {h.lower() for h in self.serve.allowed_hosts}
        if self.serve.url:
            hosts.add(urlsplit(self.serve.url).netloc.lower())
        if listen is not None:
            host, port = listen
            names = {"127.0.0.1", "localhost", "[::1]"} if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::") else set()
            names.add(f"[{host}]" if ":" in host else host)
            hosts |= {f"{n}:{port}" for n in names}
        return frozenset(hosts) if hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: the ``Host`` check comes before anything else (but ``/healthz``: a probe
        names the pod's address, and the answer tells nothing)."""
        if scope["type"] == "http" and self.allowed_hosts is not None and scope["path"] != "/healthz":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
            if host not in self.allowed_hosts:
                response = JSONResponse(error(None, INVALID_REQUEST, f"Host {host or '(none)'} is not served here"), status_code=421)
                await response(scope, receive, send)
                return
        if scope["type"] == "http" and scope["path"] == self.mcp_path and scope["method"] in MCP_METHODS:
            # the MCP endpoint straight away: Starlette's routing and middleware cost ~10% of a call's CPU
            answer = await self.endpoint(Request(scope, receive))
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def start(self) -> None:
        if self.fanout is not None:
            self.questions = Questions(self.fanout, self._answer_here)
            self.fanout.on_lost = self._channel_lost
            self.fanout.start(self._session_event)
        await self.guard.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def begin_drain(self) -> None:
        """SIGTERM: refuse new requests from now on and end every GET stream with a retry hint;
        requests in flight (and their SSE streams) go on until answered or the drain times out."""
        self.draining = True
        for entry in self.entries.values():
            if entry.host.listener is not None:
                entry.host.listener.end(retry=True)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for entry in list(self.entries.values()):
            await entry.close("The guard is shutting down")
        self.entries.clear()
        if self.fanout is not None:
            await self.fanout.close()
        await self.guard.close()

    # ------------------------------------------------------------------ resource server

    def _challenge(self, request: Request | None, code: str | None, description: str | None, scope: str | None = None) -> str:
        parts = ['Bearer realm="mcp-guard"']
        if self.oauth is not None:
            parts.append(f'resource_metadata="{self._metadata_url(request)}"')
        if code:
            parts.append(f'error="{code}"')
        if scope:
            parts.append(f'scope="{scope}"')
        if description:
            parts.append('error_description="{}"'.format(description.replace('"', "'").replace("\\", "/")))
        return ", ".join(parts)

    def _metadata_url(self, request: Request | None) -> str:
        if self.serve.url:
            return resource_metadata_url(self.serve.url)
        base = str(request.base_url).rstrip("/") if request is not None else ""
        return f"{base}{WELL_KNOWN}{self.mcp_path}"

    async def metadata(self, request: Request) -> Response:
        """RFC 9728 protected resource metadata."""
        assert self.oauth is not None
        resource = self.serve.url or f"{str(request.base_url).rstrip('/')}{self.mcp_path}"
        body: dict[str, Any] = {
            "resource": resource,
            "authorization_servers": list(self.oauth.issuers),
            "bearer_methods_supported": ["header"],
            "resource_name": "mcp-guard",
        }
        if self.oauth.scopes:
            body["scopes_supported"] = list(self.oauth.scopes)
        return JSONResponse(body, headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "max-age=300"})

    def _refuse(self, request: Request | None, status: int, code: str | None, description: str, scope: str | None = None) -> Response:
        if scope is None and self.oauth is not None and self.oauth.scopes:
            scope = " ".join(self.oauth.scopes)
        word = "Forbidden" if status == 403 else "Unauthorized"
        log.info("refused a request with HTTP %d: %s", status, description)  # no tool call: not an audit decision
        return JSONResponse(
            error(None, INVALID_REQUEST, f"{word}: {description}"),
            status_code=status,
            headers={"WWW-Authenticate": self._challenge(request, code, description if code else None, scope)},
        )

    async def authenticate(self, request: Request) -> Caller | Response:
        """The caller proven by ``Authorization: Bearer``, or the 401/403 refusal to send."""
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            what = "an OAuth access token or a grant chain" if self.oauth is not None else "a grant chain"
            return self._refuse(request, 401, None, f"{what} is required: Authorization: Bearer <token>")
        return await self.identify(request, token)

    async def identify(self, request: Request | None, token: str) -> Caller | Response:
        if self.oauth is not None and self._is_oauth(token):
            try:
                access = await self.oauth.verify(token)
            except OAuthError as exc:
                return self._refuse(request, exc.status, exc.error, str(exc), exc.scope)
            who = access.principal
            return Caller(who, None, session_binding(access.issuer, who), access.issuer, access.claims)
        try:
            chain = self.verifier.verify(token, time.time())
        except GrantError as exc:
            return self._refuse(request, 401, "invalid_token", f"{exc.code}: {exc}")
        return Caller(chain.principal, chain, session_binding(None, chain.principal, _token_key(token)))

    def _is_oauth(self, token: str) -> bool:
        """An OAuth access token: one JWT (a chain of several links has ``~``) whose issuer is not
        one of the grant-chain issuers (``trust.issuers``)."""
        if self.oauth is None or "~" in token:
            return False
        iss = self._oauth_issuer(token)
        return iss in self.oauth.issuers or iss not in self.chain_issuers

    @staticmethod
    def _oauth_issuer(token: str) -> str | None:
        import jwt

        with contextlib.suppress(jwt.PyJWTError):
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
            return iss if isinstance(iss, str) else None
        return None

    # ------------------------------------------------------------------ HTTP

    async def read_body(self, request: Request) -> bytes | Response:
        """The request body, refused with 413 as soon as it passes ``serve.max_body`` (never buffered past it)."""
        limit = self.serve.max_body
        too_large = JSONResponse(error(None, INVALID_REQUEST, f"Request too large: the limit is {limit} bytes"), status_code=413,
                                 headers={"Connection": "close"})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return too_large
                chunks.append(chunk)
        except ClientDisconnect:
            return Response(status_code=400)
        return b"".join(chunks)

    async def endpoint(self, request: Request) -> Response | _EventStream:
        origin = request.headers.get("origin")
        if origin and not (LOCAL_ORIGIN.match(origin) or origin in self.allowed_origins):
            return JSONResponse(error(None, INVALID_REQUEST, f"Origin {origin} is not allowed"), status_code=403)
        caller = await self.authenticate(request)
        if isinstance(caller, Response):
            return caller
        sid = request.headers.get("mcp-session-id")
        if request.method == "GET":
            return await self._listen(request, sid, caller)
        if request.method == "DELETE":
            found = await self._find(sid or "", caller, method="DELETE")
            if isinstance(found, Response):
                return Response(status_code=404)
            self._drop(f"sid:{sid}")
            if self.records is not None and sid:
                await self.records.forget(sid)
            await found.close("Session ended")
            return Response(status_code=200)
        body = await self.read_body(request)
        if isinstance(body, Response):
            return body
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return JSONResponse(error(None, PARSE_ERROR, "Parse error: the body is not valid JSON"), status_code=400)
        if not isinstance(message, dict):
            return JSONResponse(error(None, INVALID_REQUEST, "Invalid Request: one JSON-RPC object per POST"), status_code=400)
        header_method = request.headers.get("mcp-method")
        if header_method is not None and header_method != message.get("method"):
            return JSONResponse(error(message.get("id"), HEADER_MISMATCH, "Mcp-Method header does not match the body"), status_code=400)
        sse, eager = _accepts_sse(request.headers.get("accept", ""))
        return await self._dispatch(message, sid, caller, sse, eager)

    async def _find(self, sid: str, caller: Caller, rid: Any = None, method: str | None = None) -> _Session | Response:
        """The session ``sid`` of ``caller``: held here, or adopted from the shared records."""
        if f"sid:{sid}" not in self.entries and self.records is not None and sid:
            waiting = self._adopting.get(sid)
            if waiting is not None:  # another request of the session is adopting it: wait for that one
                await asyncio.shield(waiting)
            else:
                self._adopting[sid] = asyncio.get_running_loop().create_future()
                try:
                    refused = await self._adopt(sid, caller, rid)
                finally:
                    done = self._adopting.pop(sid)
                    done.set_result(None)
                if refused is not None:
                    return refused
        return self._entry(sid, caller, rid, method)

    async def _adopt(self, sid: str, caller: Caller, rid: Any) -> Response | None:
        """Serve a session another replica opened: replay its recorded handshake into a new local
        guard session (only for the caller it belongs to; nothing is opened for anyone else)."""
        assert self.records is not None
        record = await self.records.load(sid)
        if record is None:
            return None  # unknown: _entry answers 404
        if not self.records.matches(record, caller.binding):
            self.guard.refused(caller.principal, None, "mcp-guard refused the request: its principal is not the one that "
                               "opened this session", None)
            return JSONResponse(error(rid, INVALID_REQUEST, "This session belongs to another caller"), status_code=403)
        opened = await self._open(f"sid:{sid}", caller, record["initialize"])
        if isinstance(opened, Response):
            return opened
        entry = opened
        entry.initialize = record["initialize"]
        replayed = await self._ask(entry, {**record["initialize"], "id": "adopt"}, False, False, {})
        if not isinstance(replayed, Response) or replayed.status_code != 200 or b'"error"' in bytes(replayed.body):
            self._drop(f"sid:{sid}")
            await entry.close("Session could not be adopted")
            return JSONResponse(error(rid, INVALID_REQUEST, "Unknown or expired session"), status_code=404)
        await entry.session.handle({"jsonrpc": "2.0", "method": "notifications/initialized"})
        entry.initialized = True
        await self._replay(entry, record.get("state") or {})
        log.info("session %s adopted from the shared state store", sid[:8])
        return None

    async def _replay(self, entry: _Session, want: Message) -> None:
        """Bring ``entry``'s guard session to the recorded state (log level, subscriptions)."""
        for message in replays(entry.state, want):
            await self._ask(entry, message, False, False, {})
        entry.state = dict(want)

    def _state_answered(self, entry: _Session, request: Message, answer: asyncio.Future[Message]) -> None:
        """A request that changes the session's state was answered: record it, tell the other replicas."""
        if answer.cancelled() or not entry.key.startswith("sid:") or entry.initialize is None:
            return
        new = changed(entry.state, request, answer.result())
        if new is None:
            return
        entry.state = new
        self._later(self._share_state(entry, entry.key[4:]))

    async def _share_state(self, entry: _Session, sid: str) -> None:
        assert self.records is not None and entry.initialize is not None
        await self.records.save(sid, entry.binding, entry.initialize, entry.state)
        if self.fanout is not None:
            self.fanout.publish({"event": "state", "session": sid, "replica": self.fanout.replica})

    async def _state_elsewhere(self, sid: str) -> None:
        """Another replica changed session ``sid``'s state: replay what changed into the one held here."""
        entry = self.entries.get(f"sid:{sid}")
        record = await self.records.load(sid) if entry is not None and self.records is not None else None
        if entry is not None and record is not None and self.records is not None and self.records.matches(record, entry.binding):
            await self._replay(entry, record.get("state") or {})

    def _later(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _entry(self, sid: str, caller: Caller, rid: Any = None, method: str | None = None) -> _Session | Response:
        found = self.entries.get(f"sid:{sid}")
        if found is None:
            return JSONResponse(error(rid, INVALID_REQUEST, "Unknown or expired session"), status_code=404)
        if found.binding != caller.binding:
            self._foreign(found, caller, method)
            return JSONResponse(error(rid, INVALID_REQUEST, "This session belongs to another caller"), status_code=403)
        return found

    def _foreign(self, entry: _Session, caller: Caller, method: str | None) -> None:
        """Audit a request on a session another principal opened (another user, agent chain,
        purpose, issuer or grant chain): refused whatever it asks."""
        self.guard.refused(caller.principal, method, "mcp-guard refused the request: its principal is not the one that "
                           "opened this session", entry.session.id)

    async def _listen(self, request: Request, sid: str | None, caller: Caller) -> Response | _EventStream:
        """``GET /mcp``: the session's stream of what no request caused (list changes, resource
        updates), one per session, only for its own caller."""
        if not sid:
            return Response(status_code=405, headers={"Allow": "POST, DELETE"})  # 2026-07-28: subscriptions/listen instead
        if "text/event-stream" not in request.headers.get("accept", ""):
            return JSONResponse(error(None, INVALID_REQUEST, "GET /mcp needs Accept: text/event-stream"), status_code=406)
        if self.draining:
            return Response(status_code=503, headers={"Retry-After": "1", "Connection": "close"})
        entry = await self._find(sid, caller, method="GET")
        if isinstance(entry, Response):
            return entry
        if entry.host.listener is not None:
            return JSONResponse(error(None, INVALID_REQUEST, "This session already has a GET stream open"), status_code=409)
        stream = _Stream(True, answered=False)
        entry.host.listener = stream
        entry.busy += 1  # an open stream is a session in use: not expired while it is read

        async def closed(_: bool) -> None:
            entry.busy -= 1
            self._touch(entry)
            await entry.host.close_listener(stream)

        return _EventStream(stream.next, closed, {"Mcp-Session-Id": sid})

    async def _dispatch(self, message: Message, sid: str | None, caller: Caller, sse: bool = False,
                        eager: bool = False) -> Response | _EventStream:
        headers: dict[str, str] = {}
        method = message.get("method")
        if self.draining and is_request(message):  # answers and notifications still finish what is in flight
            return JSONResponse(error(message.get("id"), INVALID_REQUEST, "The guard is shutting down: retry on another replica"),
                                status_code=503, headers={"Retry-After": "1", "Connection": "close"})
        if method == "initialize":
            sid = uuid.uuid4().hex
            opened = await self._open(f"sid:{sid}", caller, message)
            if isinstance(opened, Response):
                return opened
            entry = opened
            headers["Mcp-Session-Id"] = sid
            if self.records is not None:
                entry.initialize = message
                await self.records.save(sid, caller.binding, message)
        elif sid:
            found = await self._find(sid, caller, message.get("id"), method if isinstance(method, str) else None)
            if isinstance(found, Response):
                return found
            entry = found
            if self.records is not None:
                await self.records.touch(sid, caller.binding, entry.initialize, entry.state)
                if not entry.initialized:  # the client's `initialized` may have landed on another replica:
                    entry.initialized = True  # it sent it before this request all the same
                    if method != "notifications/initialized":
                        await entry.session.handle({"jsonrpc": "2.0", "method": "notifications/initialized"})
        else:
            known = self.entries.get(f"id:{caller.binding}")
            if known is None:
                opened = await self._open(f"id:{caller.binding}", caller, message)
                if isinstance(opened, Response):
                    return opened
                known = opened
            entry = known
        self._touch(entry)
        if not is_request(message):
            if message.get("method") == "notifications/cancelled":
                await entry.host.cancel(entry.session, message)
            elif "method" in message or entry.host.answered(message):  # answered: a question asked on its streams
                await entry.session.handle(message)
            else:  # another replica may have asked it (questions.py); else no one did
                status, reason = (400, "no question of this session has this id") if self.questions is None or not sid \
                    else await self.questions.forward(sid, caller.binding, message)
                if reason is not None:
                    self.guard.refused(caller.principal, None, f"mcp-guard refused an answer: {reason}", entry.session.id)
                    return JSONResponse(error(message.get("id"), INVALID_REQUEST, f"Invalid Request: {reason}"),
                                        status_code=status, headers={"Retry-After": "1"} if status == 503 else {})
            return Response(status_code=202, headers=headers)
        if message.get("method") == "subscriptions/listen" and not sse:
            return JSONResponse(error(message.get("id"), INVALID_REQUEST, "subscriptions/listen needs Accept: text/event-stream"),
                                headers=headers)
        return await self._ask(entry, message, sse, eager, headers)

    async def _ask(self, entry: _Session, message: Message, sse: bool, eager: bool, headers: dict[str, str]) -> Response | _EventStream:
        """Hand one request to the session.  Its answer comes back as plain JSON unless the caller
        accepts ``text/event-stream`` and either prefers it (``eager``) or the session sends
        something about the request first (progress, a log message, a question): then the answer
        ends an SSE stream of those."""
        host = entry.host
        original = message["id"]
        inner, stream = host.open(message, sse)
        if self.records is not None and message.get("method") in SESSION_STATE and not str(original).startswith(REPLAY):
            stream.answer.add_done_callback(functools.partial(self._state_answered, entry, message))

        def outward(event: Message) -> Message:
            if "method" not in event and event.get("id") == inner:
                return {**event, "id": original}
            params = event.get("params")
            meta = params.get("_meta") if isinstance(params, dict) else None
            if isinstance(params, dict) and isinstance(meta, dict) and meta.get(META_SUBSCRIPTION_ID) == inner:
                return {**event, "params": {**params, "_meta": {**meta, META_SUBSCRIPTION_ID: original}}}
            return event

        entry.busy += 1
        streaming = False
        try:
            await entry.session.handle({**message, "id": inner})
            streaming = eager or await stream.first()
        except asyncio.CancelledError:
            await host.finish(original, inner, stream, cancel=True)
            raise
        finally:
            if not streaming:
                entry.busy -= 1
                self._touch(entry)
        if not streaming:
            await host.finish(original, inner, stream, cancel=False)
            return Response(orjson.dumps(outward(stream.answer.result())), media_type="application/json", headers=headers)

        async def closed(early: bool) -> None:
            entry.busy -= 1
            self._touch(entry)
            await host.finish(original, inner, stream, cancel=early)

        return _EventStream(stream.next, closed, headers, outward)

    # ------------------------------------------------------------------ sessions

    async def _open(self, key: str, caller: Caller, message: Message) -> _Session | Response:
        """A new session for ``caller``; past ``max_sessions_per_principal`` its own oldest idle one
        goes; one that would pass ``max_sessions_per_root`` or ``max_sessions`` is refused."""
        refusal = self._over_cap(caller, message)
        if refusal is not None:
            return refusal
        host = _ReplyHost()
        if self.questions is not None and key.startswith("sid:"):  # its questions' answers may land on other replicas
            host.share = functools.partial(self.questions.asked, key[4:])
            host.settle = functools.partial(self.questions.settled, key[4:])
            host.elsewhere = functools.partial(self._notice_elsewhere, key[4:])
        session = self.guard.new(host, caller.chain, caller.principal, caller.owner_id)  # limits count per principal
        host.session = session
        entry = _Session(key, session, host, caller.binding, caller.owner, caller.root, time.monotonic())
        self.entries[key] = entry
        self.by_session_id[session.id] = entry
        self.rooted[entry.root] = self.rooted.get(entry.root, 0) + 1
        mine = self.owned.setdefault(caller.owner, OrderedDict())
        mine[key] = None
        while len(mine) > self.serve.max_sessions_per_principal:
            victim = next((k for k in mine if not self.entries[k].busy and k != key), None) or next(iter(mine))
            old = self._drop(victim)
            if old is not None and self.records is not None and victim.startswith("sid:"):
                await self.records.forget(victim[4:])  # evicted everywhere, not only here
            if old is not None:
                log.info("%s has more than %d sessions: its least recently used one is closed", caller.owner,
                         self.serve.max_sessions_per_principal)
                await old.close("Session closed: this caller opened too many sessions")
        return entry

    def _over_cap(self, caller: Caller, message: Message) -> Response | None:
        """The refusal (audited) of a session that would add one past a cap: a principal at its own
        cap only replaces its oldest session, so it adds none."""
        mine = self.owned.get(caller.owner)
        if mine is not None and len(mine) >= self.serve.max_sessions_per_principal:
            return None
        if self.rooted.get(caller.root, 0) >= self.serve.max_sessions_per_root:
            status, reason = 429, (f"this caller's delegating root already holds {self.serve.max_sessions_per_root} sessions "
                                   "(its own and its sub-agents'); end one or wait for one to expire")
        elif len(self.entries) >= self.serve.max_sessions:
            status, reason = 503, f"the guard already holds {self.serve.max_sessions} sessions; try again later"
        else:
            return None
        method = message.get("method")
        log.info("refused a new session of %s: %s", " > ".join(caller.principal.chain), reason)
        self.guard.refused(caller.principal, method if isinstance(method, str) else None, f"mcp-guard refused a new session: {reason}")
        headers = {"Retry-After": "60"} if status == 503 else {}
        return JSONResponse(error(message.get("id"), INVALID_REQUEST, f"Too many sessions: {reason}"), status_code=status,
                            headers=headers)

    def _touch(self, entry: _Session) -> None:
        entry.used = time.monotonic()
        mine = self.owned.get(entry.owner)
        if mine is not None and entry.key in mine:
            mine.move_to_end(entry.key)

    def _drop(self, key: str) -> _Session | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.by_session_id.pop(entry.session.id, None)
            left = self.rooted.get(entry.root, 0) - 1
            if left > 0:
                self.rooted[entry.root] = left
            else:
                self.rooted.pop(entry.root, None)
            mine = self.owned.get(entry.owner)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self.owned[entry.owner]
        return entry

    async def expire_idle(self, now: float | None = None) -> int:
        """Close every session nobody used for ``serve.session_idle`` (none with a call in flight)."""
        now = time.monotonic() if now is None else now
        stale = [k for k, e in self.entries.items() if not e.busy and now - e.used > self.serve.session_idle]
        for key in stale:
            entry = self._drop(key)
            if entry is not None:
                await entry.close("Session expired")
        return len(stale)

    async def _sweep(self) -> None:
        every = max(1.0, min(60.0, self.serve.session_idle / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.expire_idle()
            except Exception:  # a failing close must not stop the sweeper
                log.exception("closing idle sessions failed")

    def _page_answered(self, approval_id: str, record: Mapping[str, Any]) -> None:
        """The approval page answered: tell the session that asked, on whichever replica holds it."""
        if self.fanout is None:
            self.elicitation_complete(approval_id, record)
            return
        self.fanout.publish({"event": "elicitation/complete", "id": approval_id, "session": record.get("session"),
                             "binding": record.get("binding")})

    def _session_event(self, event: Mapping[str, Any]) -> None:
        """An event from the replicas' channels (this replica's own included)."""
        if event.get("event") == "elicitation/complete" and isinstance(event.get("id"), str):
            self.elicitation_complete(event["id"], event)
        elif event.get("event") == "answer" and self.questions is not None:
            self.questions.received(event)
        elif event.get("event") == "state" and isinstance(event.get("session"), str) and self.fanout is not None \
                and event.get("replica") != self.fanout.replica and f"sid:{event['session']}" in self.entries:
            self._later(self._state_elsewhere(event["session"]))
        elif event.get("event") == "notice" and isinstance(event.get("message"), dict):
            entry = self.entries.get(f"sid:{event.get('session')}")
            message = event["message"]
            if entry is not None and entry.host.listener is not None and message.get("method") in STREAM_NOTICES:
                entry.host.listener.put({"jsonrpc": "2.0", "method": message["method"], "params": message.get("params", {})})

    def _notice_elsewhere(self, sid: str, message: Message) -> None:
        """A notice for session ``sid``'s GET stream, which this replica does not hold: to every replica."""
        if self.fanout is not None:
            self.fanout.publish({"event": "notice", "session": sid, "message": message})

    async def _answer_here(self, sid: str, binding: str, answer: Message) -> str | None:
        """An answer another replica forwarded: taken if this replica holds the session, the binding
        is the session's and the question is still open here; else why not."""
        entry = self.entries.get(f"sid:{sid}")
        if entry is None:
            return "the replica that asked no longer holds this session"
        if binding_digest(entry.binding) != binding:
            return "this session belongs to another caller"
        if not entry.host.answered(answer):
            return "no question of this session has this id"
        await entry.session.handle(answer)
        return None

    def _channel_lost(self) -> None:
        """The replicas' channel broke: answers landing elsewhere cannot reach this replica, so the
        questions waiting for them fail now rather than wait for an answer that cannot come."""
        reason = "the replicas' channel (Redis) was lost: the caller's answer could not reach this replica"
        for entry in list(self.entries.values()):
            if entry.host.share is not None:
                asyncio.get_running_loop().create_task(entry.host.fail_questions(reason))

    def elicitation_complete(self, approval_id: str, record: Mapping[str, Any]) -> None:
        """The approval page answered ``approval_id``: if a 2025-11-25 caller was pointed at it by
        URL-mode elicitation (its ``elicitationId`` is the approval id) and the session that asked
        has its GET stream open on this guard, tell it the elicitation is complete so its host can
        retry at once.  Nothing otherwise: no stream, another replica, a queued or 2026-07-28 request."""
        if not record.get("binding"):  # only page requests carry one (a queued call is not elicited)
            return
        entry = self.by_session_id.get(str(record.get("session")))
        if entry is None or not entry.key.startswith("sid:") or entry.host.listener is None:
            return
        notice: Message = {"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
                           "params": {"elicitationId": approval_id}}
        if not entry.host.listener.put(notice):
            log.debug("could not tell session %s that approval %s was answered", entry.key, approval_id)

    # ------------------------------------------------------------------ token exchange

    async def token(self, request: Request) -> Response:
        assert self.exchange is not None
        return await self.exchange.handle(self, request)


async def serve_http(
    sessions: Sessions,
    verifier: ChainVerifier,
    host: str,
    port: int,
    allowed_origins: tuple[str, ...] = (),
    *,
    config: ServeConfig | None = None,
    chain_issuers: frozenset[str] = frozenset(),
    oauth: OAuthVerifier | None = None,
    exchange: TokenExchange | None = None,
    reuse_port: bool = False,
    page: ApprovalPage | None = None,
    admin: Admin | None = None,
    drain: Drain | None = None,
    records: SessionRecords | None = None,
    fanout: Fanout | None = None,
) -> None:
    """Run until SIGTERM/SIGINT drains it (serve/drain.py); ``reuse_port`` shares the port with
    other processes (``serve --workers``, replicas on one host); ``admin`` is served on ``serve.admin``."""
    from mcp_guard.serve.workers import reuse_port_socket

    guard = HttpGuard(sessions, verifier, config=config, chain_issuers=chain_issuers, allowed_origins=allowed_origins,
                      oauth=oauth, exchange=exchange, listen=(host, port), page=page)
    guard.records = records
    guard.fanout = fanout
    drain = drain or Drain(guard.serve.drain_timeout)
    drain.on_begin.insert(0, guard.begin_drain)
    await guard.start()
    main = listener(guard, host, port, drain.timeout)
    admin_listener = None
    if admin is not None and guard.serve.admin is not None:
        admin_listener = listener(admin.app, guard.serve.admin.host, guard.serve.admin.port, drain.timeout)
        log.info("serving probes and metrics at http://%s:%d (/healthz, /readyz, /metrics)", guard.serve.admin.host,
                 guard.serve.admin.port)
    log.info("serving MCP at http://%s:%d%s (pid %d)", host, port, guard.mcp_path, os.getpid())
    try:
        await run_listeners(drain, main, [reuse_port_socket(host, port)] if reuse_port else None, admin_listener)
    finally:
        left = len(guard.entries)
        await guard.close()
        drain.ended(f"{left} session(s) closed")
