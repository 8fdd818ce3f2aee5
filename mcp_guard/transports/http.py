"""``mcp-guard serve``: the guard as a Streamable HTTP MCP server at ``/mcp``.

Every POST must carry ``Authorization: Bearer <grant chain>``; the chain (verified once, cached)
is the caller's identity.  A handshake-era client gets an ``Mcp-Session-Id`` bound to the chain
it initialized with; a 2026-07-28 client is served statelessly, one guard session per grant.
All sessions share one set of upstream connections.  Answers are plain JSON (no SSE): progress
and log notifications are not streamed, and approvals go through the queue (``mcp-guard
approvals``) or, on 2026-07-28, the ``input_required`` round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_guard.grants import ChainVerifier, GrantChain, GrantError
from mcp_guard.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    SERVER_TO_CLIENT,
    HostTransport,
    Message,
    error,
    is_request,
)

log = logging.getLogger("mcp_guard.http")

MAX_BODY = 4 * 1024 * 1024
MAX_SESSIONS = 10_000
HEADER_MISMATCH = -32020
LOCAL_ORIGIN = re.compile(r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$")
RELAYED_CAPABILITIES = frozenset(SERVER_TO_CLIENT.values())  # need a stream back to the client


class HostSession(Protocol):
    """One caller's guard session, as the transport drives it."""

    async def handle(self, message: Any) -> None: ...
    async def close(self) -> None: ...


class Sessions(Protocol):
    """What serving needs from the guard: its shared upstreams, and a new session per caller."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def new(self, host: HostTransport, chain: GrantChain) -> HostSession: ...


class _ReplyHost:
    """Collects the answer to each request a session handles, by (rewritten) request id."""

    def __init__(self) -> None:
        self._waiting: dict[Any, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)

    async def send(self, message: Message) -> None:
        fut = self._waiting.pop(message.get("id"), None) if "method" not in message else None
        if fut is not None and not fut.done():
            fut.set_result(message)
        else:
            log.debug("not delivered over plain JSON: %s", message.get("method") or message.get("id"))

    async def ask(self, session: HostSession, message: Message) -> Message:
        """Hand one request to the session under an id unique to this host, and await its answer."""
        original = message["id"]
        inner = f"h{next(self._ids)}"
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[inner] = fut
        try:
            await session.handle({**message, "id": inner})
            answer = await fut
        finally:
            self._waiting.pop(inner, None)
        answer["id"] = original
        return answer


@dataclass
class _Session:
    session: HostSession
    host: _ReplyHost
    grant: str  # SHA-256 of the bearer token this session is bound to
    used: float


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class HttpGuard:
    def __init__(self, sessions: Sessions, verifier: ChainVerifier, *, allowed_origins: tuple[str, ...] = ()) -> None:
        self.guard = sessions
        self.verifier = verifier
        self.allowed_origins = allowed_origins
        self.sessions: OrderedDict[str, _Session] = OrderedDict()  # Mcp-Session-Id -> session (handshake era)
        self.stateless: OrderedDict[str, _Session] = OrderedDict()  # grant -> session (2026-07-28)
        self.app = Starlette(routes=[Route("/mcp", self.endpoint, methods=["GET", "POST", "DELETE"])])

    async def start(self) -> None:
        await self.guard.start()

    async def close(self) -> None:
        for entry in [*self.sessions.values(), *self.stateless.values()]:
            await entry.session.close()
        await self.guard.close()

    # ------------------------------------------------------------------ HTTP

    async def endpoint(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin and not (LOCAL_ORIGIN.match(origin) or origin in self.allowed_origins):
            return JSONResponse(error(None, INVALID_REQUEST, f"Origin {origin} is not allowed"), status_code=403)
        if request.method == "GET":
            return Response(status_code=405, headers={"Allow": "POST, DELETE"})
        token, chain, refusal = self._authenticate(request)
        if refusal is not None:
            return refusal
        assert token is not None and chain is not None
        sid = request.headers.get("mcp-session-id")
        if request.method == "DELETE":
            entry = self.sessions.get(sid or "")
            if entry is None or entry.grant != _token_key(token):
                return Response(status_code=404)
            del self.sessions[sid or ""]
            await entry.session.close()
            return Response(status_code=200)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse(error(None, INVALID_REQUEST, "Request too large"), status_code=413)
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return JSONResponse(error(None, PARSE_ERROR, "Parse error: the body is not valid JSON"), status_code=400)
        if not isinstance(message, dict):
            return JSONResponse(error(None, INVALID_REQUEST, "Invalid Request: one JSON-RPC object per POST"), status_code=400)
        header_method = request.headers.get("mcp-method")
        if header_method is not None and header_method != message.get("method"):
            return JSONResponse(error(message.get("id"), HEADER_MISMATCH, "Mcp-Method header does not match the body"), status_code=400)
        return await self._dispatch(message, sid, token, chain)

    def _authenticate(self, request: Request) -> tuple[str | None, GrantChain | None, Response | None]:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, None, self._unauthorized("invalid_request", "a grant chain is required: Authorization: Bearer <chain>")
        token = token.strip()
        try:
            chain = self.verifier.verify(token, time.time())
        except GrantError as exc:
            return None, None, self._unauthorized("invalid_token", f"{exc.code}: {exc}")
        return token, chain, None

    @staticmethod
    def _unauthorized(code: str, description: str) -> Response:
        safe = description.replace('"', "'")
        return JSONResponse(
            error(None, INVALID_REQUEST, f"Unauthorized: {description}"),
            status_code=401,
            headers={"WWW-Authenticate": f'Bearer realm="mcp-guard", error="{code}", error_description="{safe}"'},
        )

    async def _dispatch(self, message: Message, sid: str | None, token: str, chain: GrantChain) -> Response:
        grant = _token_key(token)
        headers: dict[str, str] = {}
        if message.get("method") == "initialize":
            params = message.get("params")
            if isinstance(params, dict) and isinstance(params.get("capabilities"), dict):
                caps = {k: v for k, v in params["capabilities"].items() if k not in RELAYED_CAPABILITIES}
                message = {**message, "params": {**params, "capabilities": caps}}
            sid = uuid.uuid4().hex
            entry = self._new_session(chain, grant)
            self.sessions[sid] = entry
            self._evict(self.sessions)
            headers["Mcp-Session-Id"] = sid
        elif sid:
            found = self.sessions.get(sid)
            if found is None:
                return JSONResponse(error(message.get("id"), INVALID_REQUEST, "Unknown or expired session"), status_code=404)
            if found.grant != grant:
                return JSONResponse(error(message.get("id"), INVALID_REQUEST, "This session belongs to another grant"), status_code=403)
            entry = found
            self.sessions.move_to_end(sid)
        else:
            entry = self.stateless.get(grant) or self._new_session(chain, grant)
            self.stateless[grant] = entry
            self.stateless.move_to_end(grant)
            self._evict(self.stateless)
        entry.used = time.monotonic()
        if not is_request(message):
            await entry.session.handle(message)
            return Response(status_code=202, headers=headers)
        answer = await entry.host.ask(entry.session, message)
        return Response(orjson.dumps(answer), media_type="application/json", headers=headers)

    def _new_session(self, chain: GrantChain, grant: str) -> _Session:
        host = _ReplyHost()
        return _Session(self.guard.new(host, chain), host, grant, time.monotonic())

    @staticmethod
    def _evict(table: OrderedDict[str, _Session]) -> None:
        while len(table) > MAX_SESSIONS:
            _, old = table.popitem(last=False)
            asyncio.get_running_loop().create_task(old.session.close())


async def serve_http(sessions: Sessions, verifier: ChainVerifier, host: str, port: int, allowed_origins: tuple[str, ...] = ()) -> None:
    """Run until cancelled (SIGINT/SIGTERM)."""
    import uvicorn

    guard = HttpGuard(sessions, verifier, allowed_origins=allowed_origins)
    await guard.start()
    server = uvicorn.Server(uvicorn.Config(guard.app, host=host, port=port, log_level="warning", lifespan="off"))
    log.info("serving MCP at http://%s:%d/mcp", host, port)
    try:
        await server.serve()
    finally:
        await guard.close()
