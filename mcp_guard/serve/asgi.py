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
import logging
import os
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.config import ServeConfig
from mcp_guard.grants import ChainVerifier
from mcp_guard.jsonrpc import INVALID_REQUEST, META_SUBSCRIPTION_ID, PARSE_ERROR, Message, error, is_request
from mcp_guard.proxy import era_rules
from mcp_guard.proxy.era_rules import HEADER_MISMATCH
from mcp_guard.serve.admin import healthz
from mcp_guard.serve.drain import Drain, listener, run_listeners
from mcp_guard.serve.oauth import OAuthVerifier
from mcp_guard.serve.replica_link import ReplicaLink
from mcp_guard.serve.resource import WELL_KNOWN, Caller, McpRequest, ResourceServer
from mcp_guard.serve.streams import EventStream, JsonAnswer, Stream, accepts_sse
from mcp_guard.serve.table import SessionEntry, Sessions, SessionTable

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from mcp_guard.serve.admin import Admin
    from mcp_guard.serve.approval_page import ApprovalPage
    from mcp_guard.serve.exchange import TokenExchange
    from mcp_guard.serve.fanout import Fanout
    from mcp_guard.serve.questions import Questions
    from mcp_guard.serve.session_records import SessionRecords

log = logging.getLogger("mcp_guard.http")

LOCAL_ORIGIN = re.compile(r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$")
MCP_METHODS = ("GET", "POST", "DELETE")  # what the MCP endpoint answers (others: 405 from the router)


class HttpGuard(ResourceServer, ReplicaLink, SessionTable):
    """The ASGI app: the ``Host`` and ``Origin`` checks, authentication (``ResourceServer``), the
    session table (``SessionTable``), what ties it to other replicas (``ReplicaLink``), and each
    request handed to its session."""

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
        serve = config or ServeConfig()
        ResourceServer.__init__(self, verifier, serve, chain_issuers, oauth)
        SessionTable.__init__(self, sessions, serve)
        self.exchange = exchange
        self.allowed_origins = allowed_origins
        self.allowed_hosts = self._allowed_hosts(listen)
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False  # SIGTERM: new requests are refused with 503, what is in flight finishes
        self.fanout: Fanout | None = None  # redis://: session events reach the replica holding the stream
        self.questions: Questions | None = None  # redis://: answers reach the replica that asked (made at start)
        self._tasks: set[asyncio.Future[None]] = set()  # background work kept referenced (session state)
        self._adopting: dict[str, asyncio.Future[None]] = {}
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
            found = [value for key, value in scope.get("headers") or () if key == b"host"]  # not a dict of all per request
            host = found[0].decode("latin-1").lower() if len(found) == 1 else "(several)" if found else ""  # RFC 9112: one
            if host not in self.allowed_hosts:
                response = JSONResponse(error(None, INVALID_REQUEST, f"Host {host or '(none)'} is not served here"), status_code=421)
                await response(scope, receive, send)
                return
        if scope["type"] == "http" and scope["path"] == self.mcp_path and scope["method"] in MCP_METHODS:
            # the MCP endpoint straight away: Starlette's routing and middleware cost ~10% of a call's CPU
            answer = await self.endpoint(McpRequest(scope, receive))
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def start(self) -> None:
        self._link_start()
        if self.fanout is not None:
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
    async def endpoint(self, request: Request) -> Response | EventStream:
        if not isinstance(request, McpRequest):  # through the router
            request = McpRequest(request.scope, request.receive)
        head = request.head
        origin = head.get("origin")
        if origin and not (LOCAL_ORIGIN.fullmatch(origin) or origin in self.allowed_origins):
            return JSONResponse(error(None, INVALID_REQUEST, f"Origin {origin} is not allowed"), status_code=403)
        caller = await self.authenticate(request)
        if isinstance(caller, Response):
            return caller
        sid = head.get("mcp-session-id")
        method = request.scope["method"]
        if method == "GET":
            return await self._listen(request, sid, caller)
        if method == "DELETE":
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
        modern = is_request(message) and era_rules.modern_header(head.get("mcp-protocol-version"))
        if modern:
            raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
            refusal = era_rules.check(message, head, raw)
            if refusal is not None:
                method = message.get("method")
                self.guard.refused(caller.principal, method if isinstance(method, str) else None,
                                   f"mcp-guard refused a 2026-07-28 request: {refusal.message}")
                return JSONResponse(refusal.answer(message.get("id")), status_code=refusal.status)
        header_method = head.get("mcp-method")
        if header_method is not None and header_method != message.get("method"):
            return JSONResponse(error(message.get("id"), HEADER_MISMATCH, "Mcp-Method header does not match the body"), status_code=400)
        sse, eager = accepts_sse(head.get("accept", ""))
        return await self._dispatch(message, sid, caller, sse, eager, modern)

    async def _find(self, sid: str, caller: Caller, rid: Any = None, method: str | None = None) -> SessionEntry | Response:
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
        self._wire(entry)
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
    async def _listen(self, request: McpRequest, sid: str | None, caller: Caller) -> Response | EventStream:
        """``GET /mcp``: the session's stream of what no request caused (list changes, resource
        updates), one per session, only for its own caller."""
        if not sid:
            return Response(status_code=405, headers={"Allow": "POST, DELETE"})  # 2026-07-28: subscriptions/listen instead
        if "text/event-stream" not in request.head.get("accept", ""):
            return JSONResponse(error(None, INVALID_REQUEST, "GET /mcp needs Accept: text/event-stream"), status_code=406)
        if self.draining:
            return Response(status_code=503, headers={"Retry-After": "1", "Connection": "close"})
        entry = await self._find(sid, caller, method="GET")
        if isinstance(entry, Response):
            return entry
        if entry.host.listener is not None:
            return JSONResponse(error(None, INVALID_REQUEST, "This session already has a GET stream open"), status_code=409)
        stream = Stream(True, answered=False)
        entry.host.listener = stream
        entry.busy += 1  # an open stream is a session in use: not expired while it is read

        async def closed(_: bool) -> None:
            entry.busy -= 1
            self._touch(entry)
            await entry.host.close_listener(stream)

        return EventStream(stream.next, closed, {"Mcp-Session-Id": sid})

    async def _dispatch(self, message: Message, sid: str | None, caller: Caller, sse: bool = False,
                        eager: bool = False, modern: bool = False) -> Response | EventStream:
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
                self._wire(entry)
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
                refused = await self._forward_answer(entry, sid, caller, message)
                if refused is not None:
                    return refused
            return Response(status_code=202, headers=headers)
        if message.get("method") == "subscriptions/listen" and not sse:
            return JSONResponse(error(message.get("id"), INVALID_REQUEST, "subscriptions/listen needs Accept: text/event-stream"),
                                headers=headers)
        return await self._ask(entry, message, sse, eager, headers, modern)

    async def _ask(self, entry: SessionEntry, message: Message, sse: bool, eager: bool, headers: dict[str, str],
                   modern: bool = False) -> Response | EventStream:
        """Hand one request to the session.  Its answer comes back as plain JSON unless the caller
        accepts ``text/event-stream`` and either prefers it (``eager``) or the session sends
        something about the request first (progress, a log message, a question): then the answer
        ends an SSE stream of those.  A 2026-07-28 error answer in JSON carries its HTTP status
        (-32601: 404, -32602: 400, ...)."""
        host = entry.host
        original = message["id"]
        inner, stream = host.open(message, sse)
        self._watch_state(entry, message, stream)

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
            answer = outward(stream.answer.result())
            failure = answer.get("error")
            status = era_rules.http_status(failure.get("code")) if modern and isinstance(failure, dict) else 200
            return JsonAnswer(orjson.dumps(answer), status, headers)

        async def closed(early: bool) -> None:
            entry.busy -= 1
            self._touch(entry)
            await host.finish(original, inner, stream, cancel=early)

        return EventStream(stream.next, closed, headers, outward)
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
        else:
            self._replica_event(event)

    def elicitation_complete(self, approval_id: str, record: Mapping[str, Any]) -> None:
        """The approval page answered ``approval_id``: if a 2025-11-25 caller was pointed at it by
        URL-mode elicitation (its ``elicitationId`` is the approval id) and the session that asked
        has its GET stream open on this guard, tell it the elicitation is complete so its host can
        retry at once.  Nothing otherwise: no stream, another replica, a queued or 2026-07-28 request."""
        if not record.get("binding"):  # only page requests carry one (a queued call is not elicited)
            return
        entry = self.by_session_key.get(str(record.get("session")))
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
