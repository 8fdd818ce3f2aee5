"""One host session: the message pump.

It reads what the host sends, answers the handshake (``proxy/handshake.py``), hands every request
to its handler — lists and mediated requests are resolved by ``proxy/routing.py`` and decided by
the call pipeline (``proxy/pipeline.py``) — and relays protocol plumbing (cancellation, progress,
upstream sampling/elicitation/roots) to whoever caused it.  A method it does not know is refused,
never forwarded.

Messages are dicts parsed once by the transport.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_guard.decision import Kind, Outcome, Verdict, evaluate
from mcp_guard.errors import RpcError, StateError, UpstreamError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    META_LOG_LEVEL,
    META_SUBSCRIPTION_ID,
    METHOD_NOT_FOUND,
    REFUSED,
    Era,
    HostTransport,
    Message,
    error,
    is_notification,
    is_request,
    is_response,
    notification,
    request,
    result,
)
from mcp_guard.policy import Brought, PolicySet
from mcp_guard.proxy import era_rules
from mcp_guard.proxy.catalogue import Catalogue
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.flow import scope_of, what_it_brought
from mcp_guard.proxy.handshake import HostProfile
from mcp_guard.proxy.pipeline import Pipeline
from mcp_guard.proxy.relay import KIND as RELAYED_KIND
from mcp_guard.proxy.relay import Relay, settle
from mcp_guard.proxy.routing import LOG_LEVELS, Owners, Router
from mcp_guard.request import RequestContext, Target
from mcp_guard.upstreams.connection import Status, Upstream

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain

log = logging.getLogger("mcp_guard.session")

# the chain's expiry and revocation are checked for every request but these: ping says nothing,
# and tools/call is checked by the call pipeline itself (a refusal is then a tool result)
_CHAIN_CHECKED_LATER = frozenset({"ping", "tools/call"})
# 2026-07-28 subscriptions/listen filter -> the list-change notification it asks for
_LISTEN_FILTERS = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
MAX_LISTENS = 16  # open subscriptions/listen requests per session: each holds a task until cancelled
MAX_RESOURCE_SUBSCRIPTIONS = 256  # URIs one subscriptions/listen may ask for (each may cost an upstream request)
_STARTLESS = frozenset({"initialize", "server/discover", "ping"})  # answered before the upstreams are up


@dataclass
class _HostRequest:
    """A request the guard sent to the host on behalf of an upstream (sampling, elicitation, roots)."""

    future: asyncio.Future[Message]


class UpstreamSubscriptions:
    """How many holders (listens, serve callers) each upstream resource subscription has: it is
    made upstream for the first and dropped there when the last goes, so the upstream never keeps
    sending updates nobody hears."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], int] = {}  # (upstream, uri) -> holders

    def held(self, key: tuple[str, str]) -> bool:
        return key in self._held

    def held_anywhere(self, uri: str) -> bool:
        return any(held == uri for _, held in self._held)

    def hold(self, key: tuple[str, str]) -> None:
        self._held[key] = self._held.get(key, 0) + 1

    def release(self, key: tuple[str, str]) -> bool:
        """One holder fewer; True when it was the last (the upstream subscription should go)."""
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
            return False
        self._held.pop(key, None)
        return True

    @staticmethod
    async def unsubscribe(up: Upstream | None, uri: str) -> None:
        if up is not None and up.status == Status.READY:
            try:
                await up.request("resources/unsubscribe", {"uri": uri})
            except (RpcError, UpstreamError) as exc:
                log.info("resources/unsubscribe %s on %s failed: %s", uri, up.name, exc)


class GuardSession:
    """One host session.  On stdio it owns the upstream connections; in ``serve`` mode many
    sessions (one per HTTP session or grant) share those of a ``hub`` session, and each carries
    its own verified grant chain."""

    def __init__(
        self,
        ctx: GuardContext,
        host: HostTransport,
        *,
        hub: GuardSession | None = None,
        chain: GrantChain | None = None,
    ) -> None:
        self.ctx = ctx
        self.host = host
        self.hub = hub
        self.chain = chain if hub is not None else ctx.chain
        self.id = uuid.uuid4().hex
        self.limit_scope = self.id  # what per_minute/per_session limits count by
        self.profile = HostProfile()
        self.upstreams: dict[str, Upstream]
        self.catalogue: Catalogue
        self.pipeline: Pipeline
        self.owners: Owners
        if hub is not None:
            self.upstreams, self.catalogue, self.pipeline, self.owners = hub.upstreams, hub.catalogue, hub.pipeline, hub.owners
        else:
            self.upstreams = {name: Upstream(cfg, self, telemetry=ctx.telemetry) for name, cfg in ctx.config.upstreams.items()}
            self.catalogue = Catalogue(ctx.pins, ctx.config.pinning)
            self.pipeline = Pipeline(ctx, self.upstreams)
            self.owners = Owners()
        self._relay = Relay()
        self.router = Router(lambda: self.ctx.policies, self.upstreams, self.catalogue, self.owners, self.pipeline,
                             self._relay, self._track, self._settled_call, self._upstream_level)
        self._started: asyncio.Task[None] | None = None
        self._inflight: dict[Any, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # found once: on 3.11 each lookup is a getpid(2)
        self._upstream_ids: dict[Any, tuple[Upstream, int]] = {}  # host request id -> where it went
        self._log_levels: dict[Any, int] = {}  # 2026-07-28: host request id -> the log level it opted in to
        self._listeners: dict[Any, frozenset[str]] = {}  # 2026-07-28: open listen request id -> what it asked for
        # 2026-07-28: every open listen request id (registered before its first await) -> the
        # (upstream, uri) resource subscriptions it holds
        self._listen_uris: dict[Any, frozenset[tuple[str, str]]] = {}
        # (upstream, uri) -> holders of that upstream subscription (a serve hub's is shared by its callers)
        self.subscriptions: UpstreamSubscriptions = hub.subscriptions if hub is not None else UpstreamSubscriptions()
        self._host_ids = 0
        self._host_pending: dict[int, _HostRequest] = {}
        self._agent_default: str | None = None
        self._principal: tuple[Any, Principal] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.fatal: str | None = None  # set when the guard must not go on (a start-up error)
        self.on_fatal: Callable[[], None] | None = None
        self._host_initialized = asyncio.Event()  # legacy hosts take requests only after `initialized`
        r = self.router
        self._handlers: dict[str, Callable[[RequestContext], Awaitable[Message]]] = {
            "initialize": self._initialize,
            "server/discover": self._discover,
            "ping": self._ping,
            "tools/list": r.tools_list,
            "tools/call": r.tools_call,
            "resources/list": r.resources_list,
            "resources/templates/list": r.templates_list,
            "resources/read": r.resource_request,
            "resources/subscribe": r.resource_request,
            "resources/unsubscribe": r.resource_request,
            "prompts/list": r.prompts_list,
            "prompts/get": r.prompts_get,
            "completion/complete": r.complete,
            "logging/setLevel": r.set_level,
            "subscriptions/listen": self._listen,
        }

    # ------------------------------------------------------------------ the host's profile

    @property
    def era(self) -> Era | None:
        return self.profile.era

    @era.setter
    def era(self, value: Era | None) -> None:
        self.profile.era = value

    @property
    def protocol_version(self) -> str:
        return self.profile.protocol_version

    @property
    def client_info(self) -> Message:
        return self.profile.client_info

    @property
    def client_capabilities(self) -> Message:
        return self.profile.client_capabilities

    @property
    def principal(self) -> Principal:
        if self.chain is not None:
            return self.chain.principal
        ident = self.ctx.config.identity
        agent = ident.agent or self._agent_default or str(self.client_info.get("name") or "unknown-agent")
        known = self._principal
        if known is None or known[0] != agent:  # built once per agent name, not per request
            known = self._principal = (agent, Principal(user=ident.user or "unknown-user", agents=(agent,), purpose=ident.purpose, verified=False))
        return known[1]

    def _request(self, message: Message) -> RequestContext:
        profile = self.profile
        return RequestContext(self.id, self.principal, self.chain, profile.era, profile.protocol_version, message,
                              profile.request_capabilities(message), profile.client_info, self.request_host, self.limit_scope,
                              tell_host=self.send)

    # ------------------------------------------------------------------ host side

    async def handle(self, message: Any) -> None:
        """Entry point for every message the host sends."""
        if not isinstance(message, dict):
            await self.send(error(None, INVALID_REQUEST, "Invalid Request: expected a JSON-RPC object"))
            return
        rid = message.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int, float))):
            # JSON-RPC ids are strings or numbers; anything else cannot be matched (or even hashed)
            await self.send(error(None, INVALID_REQUEST, "Invalid Request: id must be a string or a number"))
            return
        if is_request(message):
            if (self.profile.era == Era.MODERN or era_rules.modern_request(message)) and await self._era_refused(message):
                return
            self.profile.note(message)
            if self.profile.era == Era.MODERN:
                self._note_log_level(message)
            req = self._request(message)
            loop = self._loop or self._running_loop()
            task = loop.create_task(self._serve(req))
            self._inflight[message["id"]] = task
        elif is_notification(message):
            await self._host_notification(message)
        elif is_response(message):
            pending = self._host_pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            if pending is not None and not pending.future.done():
                pending.future.set_result(message)
        elif "id" in message:
            await self.send(error(message.get("id"), INVALID_REQUEST, "Invalid Request"))

    async def _era_refused(self, message: Message) -> bool:
        """A 2026-07-28 request the era's rules refuse (proxy/era_rules.py) is answered and audited
        here, before it is noted, decided or forwarded."""
        refusal = era_rules.check(message)
        if refusal is None:
            return False
        await self.pipeline.audit_refused(self._request(message), None, None, Verdict(Outcome.UNKNOWN if refusal.code == METHOD_NOT_FOUND else Outcome.DENY, f"mcp-guard refused a 2026-07-28 request: {refusal.message}"))
        await self.send(refusal.answer(message["id"]))
        return True

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        return loop

    async def send(self, message: Message) -> None:
        await self.host.send(message)

    async def _serve(self, req: RequestContext) -> None:
        """Answer one host request, inside its telemetry (SERVER span, duration)."""
        with self.ctx.telemetry.request(req) as traced:
            message = req.message
            rid = message["id"]
            method = message.get("method")
            try:
                if not isinstance(method, str):
                    raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a string")
                handler = self._handlers.get(method)
                if req.chain is not None and method not in _CHAIN_CHECKED_LATER:
                    refused = await self.pipeline.chain_refusal(req)  # revoked or expired: nothing at all
                    if refused is not None:
                        await self.pipeline.audit_refused(req, None, None, refused)
                        raise RpcError(REFUSED, refused.reason)
                if handler is None:
                    text = f"Method not found: {method}"
                    await self.pipeline.audit_refused(req, None, None, Verdict(Outcome.UNKNOWN, text))
                    raise RpcError(METHOD_NOT_FOUND, text)
                if method not in _STARTLESS:
                    await self._ensure_started()
                response = await handler(req)
            except asyncio.CancelledError:
                return  # the host cancelled it: no answer (spec: receivers SHOULD NOT respond)
            except RpcError as exc:
                response = exc.to_message(rid)
            except UpstreamError as exc:
                response = error(rid, INTERNAL_ERROR, str(exc))
            except Exception:  # request edge: a bug answers this request with an error, never a traceback
                log.exception("internal error handling %s", method)
                response = error(rid, INTERNAL_ERROR, f"mcp-guard failed to handle {method}; see the guard's log")
            finally:
                self._inflight.pop(rid, None)
                self._upstream_ids.pop(rid, None)
                self._log_levels.pop(rid, None)
            response = self.profile.shape(str(method), response)
            traced.respond(response)
            await self.send(response)
            if self.fatal is not None and self.on_fatal is not None:
                self.on_fatal()  # e.g. a tool name collision: answered, now the guard stops

    def _note_log_level(self, message: Message) -> None:
        """2026-07-28: a request opts in to log messages with ``_meta`` logLevel (a known level)."""
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        level = meta.get(META_LOG_LEVEL) if isinstance(meta, dict) else None
        if isinstance(level, str) and level in LOG_LEVELS:
            self._log_levels[message["id"]] = LOG_LEVELS.index(level)

    def _wants_log(self, upstream: Upstream, params: Message) -> bool:
        """A 2026-07-28 log message goes out while a request that opted in at or below its level is
        being served by ``upstream`` (it flows before that request's response)."""
        level = params.get("level")
        if not isinstance(level, str) or level not in LOG_LEVELS:
            return False
        rank = LOG_LEVELS.index(level)
        for rid, wanted in self._log_levels.items():
            where = self._upstream_ids.get(rid)
            if where is not None and where[0] is upstream and rank >= wanted:
                return True
        return False

    def _at_level(self, params: Message) -> bool:
        wanted = self.router.log_level
        level = params.get("level")
        return wanted is None or (isinstance(level, str) and level in LOG_LEVELS and LOG_LEVELS.index(level) >= wanted)

    async def _host_notification(self, message: Message) -> None:
        """Notifications are never answered; malformed ones are dropped."""
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/cancelled":
            rid = params.get("requestId")
            if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
                log.debug("notifications/cancelled with an invalid requestId dropped")
                return
            where = self._upstream_ids.pop(rid, None)
            if where is not None:
                upstream, upstream_id = where
                await upstream.notify("notifications/cancelled", {**params, "requestId": upstream_id})
            task = self._inflight.pop(rid, None)
            if task is not None:
                task.cancel()
        elif method == "notifications/roots/list_changed":
            for up in self.upstreams.values():
                if up.config.roots == "pass" and up.status == Status.READY:
                    await up.notify(method, params or None)
        elif method == "notifications/initialized":
            self._host_initialized.set()
        elif method == "notifications/progress":
            return
        else:
            log.debug("host notification %s not relayed", method)

    # ------------------------------------------------------------------ handshake

    async def _initialize(self, req: RequestContext) -> Message:
        params = req.message.get("params")
        self.profile.initialize(params if isinstance(params, dict) else {})
        req.era, req.protocol_version, req.principal = self.profile.era, self.profile.protocol_version, self.principal
        await self._ensure_started()
        self._check_collisions()
        return result(req.message["id"], self.profile.initialize_result(self.upstreams.values()))

    async def _discover(self, req: RequestContext) -> Message:
        await self._ensure_started()
        self._check_collisions()
        return result(req.message["id"], self.profile.discover_result(self.upstreams.values()))

    def _check_collisions(self) -> None:
        if collisions := self.catalogue.collisions():
            self.fatal = "mcp-guard cannot start: " + "; ".join(collisions)
            raise RpcError(INTERNAL_ERROR, self.fatal)

    async def _ping(self, req: RequestContext) -> Message:
        return result(req.message["id"], {})

    # ------------------------------------------------------------------ 2026-07-28 list changes

    async def _listen(self, req: RequestContext) -> Message:
        """``subscriptions/listen``: acknowledge the list changes the guard honours, then stay open
        (no answer) until the host cancels it or goes away; list changes are sent on it meanwhile."""
        if req.era != Era.MODERN:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: subscriptions/listen")
        wanted = req.params.get("notifications")
        if not isinstance(wanted, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: subscriptions/listen needs a `notifications` object")
        if len(self._listen_uris) >= MAX_LISTENS:
            raise RpcError(INVALID_REQUEST, f"mcp-guard keeps at most {MAX_LISTENS} subscriptions/listen requests open; cancel one first")
        uris = wanted.get("resourceSubscriptions", [])
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise RpcError(INVALID_PARAMS, "Invalid params: `resourceSubscriptions` must be a list of resource URIs")
        if len(uris) > MAX_RESOURCE_SUBSCRIPTIONS:
            raise RpcError(INVALID_PARAMS, f"Invalid params: at most {MAX_RESOURCE_SUBSCRIPTIONS} `resourceSubscriptions` per listen")
        honoured: dict[str, Any] = {key: True for key in _LISTEN_FILTERS if wanted.get(key) is True}
        rid = req.message["id"]
        self._listen_uris[rid] = frozenset()
        try:
            held = await self._subscribe(req, rid, list(dict.fromkeys(uris)))
            if held:
                honoured["resourceSubscriptions"] = [uri for _, uri in held]
            self._listeners[rid] = frozenset(_LISTEN_FILTERS[key] for key in honoured if key in _LISTEN_FILTERS)
            # the acknowledgement is written before any change can be (the transport writes at once)
            await self.send(notification("notifications/subscriptions/acknowledged",
                                         {"_meta": {META_SUBSCRIPTION_ID: rid}, "notifications": honoured}))
            await asyncio.Event().wait()  # ends only by cancellation
        finally:
            self._listeners.pop(rid, None)
            await self._unsubscribe(self._listen_uris.pop(rid, frozenset()))
        raise AssertionError("unreachable")

    async def _subscribe(self, req: RequestContext, rid: Any, uris: list[str]) -> list[tuple[str, str]]:
        """Subscribe a listen to the resources it asked for that this session may see, on upstreams
        that offer subscriptions (``resources/subscribe``, once per resource however many listens
        hold it).  A hidden or unknown URI is audited as unknown and left out of the acknowledgement,
        exactly like one no upstream has; a visible one that a read of would not simply allow
        (a deny on its URI, or an approval) is audited with that decision and left out too."""
        held: list[tuple[str, str]] = []
        for uri in uris:
            try:
                target = await self.router.resource_target(req, uri)
            except RpcError:
                continue  # hidden or unknown (audited by resource_target)
            verdict = evaluate(self.ctx.policies, req.chain, req.principal, target.qualified, {"uri": uri}, None,
                               self.ctx.clock(), kind=Kind.RESOURCE, paths=self.pipeline.paths(target.upstream))
            if verdict.decision is not Outcome.ALLOW:  # denied, or a read would need a person: no standing watch
                await self.pipeline.audit_refused(req, Kind.RESOURCE, uri, verdict, target.upstream)
                continue
            up = self.upstreams.get(target.upstream)
            caps = up.capabilities.get("resources") if up is not None else None
            if up is None or up.era != Era.LEGACY or up.status != Status.READY or not (isinstance(caps, dict) and caps.get("subscribe")):
                continue  # an upstream that cannot be subscribed: not honoured, as the acknowledgement says
            key = (up.name, uri)
            if not self.subscriptions.held(key):
                try:
                    await up.request("resources/subscribe", {"uri": uri})
                except (RpcError, UpstreamError) as exc:
                    log.info("resources/subscribe %s on %s failed: %s", uri, up.name, exc)
                    continue
            self.subscriptions.hold(key)
            self._listen_uris[rid] = self._listen_uris[rid] | {key}
            held.append(key)
        return held

    async def _unsubscribe(self, keys: Iterable[tuple[str, str]]) -> None:
        """A listen ended: drop its resource subscriptions upstream once nothing else holds them."""
        for key in keys:
            if self.subscriptions.release(key):
                await self.subscriptions.unsubscribe(self.upstreams.get(key[0]), key[1])

    async def _resource_updated(self, upstream: Upstream, params: Message) -> None:
        """2026-07-28: a resource update goes only to the listens subscribed to that URI."""
        uri = params.get("uri")
        key = (upstream.name, uri)
        out = {k: v for k, v in params.items() if k != "_meta"}
        for rid, keys in list(self._listen_uris.items()):
            if key in keys and rid in self._listeners:
                await self.send(notification("notifications/resources/updated", {**out, "_meta": {META_SUBSCRIPTION_ID: rid}}))

    async def _list_changed(self, method: str) -> None:
        """Tell the host a list it sees changed: a handshake-era host directly, a 2026-07-28 host on
        each open ``subscriptions/listen`` that asked for it (and nowhere else)."""
        if self.era == Era.LEGACY:
            await self.send(notification(method))
            return
        for rid, methods in list(self._listeners.items()):
            if method in methods:
                await self.send(notification(method, {"_meta": {META_SUBSCRIPTION_ID: rid}}))

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Start the upstreams (once; a hub's sessions share its start)."""
        await self._ensure_started()

    async def _ensure_started(self) -> None:
        if self.hub is not None:
            await self.hub._ensure_started()
            return
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start_upstreams())
        await asyncio.shield(self._started)

    async def _start_upstreams(self) -> None:
        await asyncio.gather(*(up.start(self.profile.upstream_capabilities(up)) for up in self.upstreams.values()))
        self._rebuild_catalogue()
        for up in self.upstreams.values():
            if up.status == Status.STARTING and not up.last_error:
                log.warning("upstream %s is still starting after %gs (startup_timeout); its tools join when it is ready", up.name, up.config.startup_timeout)
            elif up.status != Status.READY:
                log.error("%s", up.last_error or f"upstream {up.name} did not start")

    def _rebuild_catalogue(self) -> None:
        self.catalogue.rebuild(self.upstreams.values())
        self.ctx.policies.warm(self.tool_names())  # per-tool rule lists built here, not on the first call

    def tool_names(self) -> list[str]:
        """Every catalogued tool as ``UPSTREAM/TOOL`` (for warming a freshly loaded policy set)."""
        return [e.qualified for e in self.catalogue.entries]

    def visible_tools(self) -> list[Target]:
        return self.router.visible_tools(self.principal, self.chain)

    def _track(self, host_id: Any, upstream: Upstream, upstream_id: int) -> None:
        self._upstream_ids[host_id] = (upstream, upstream_id)

    async def _upstream_call(self, up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Message:
        """Send a forwarded request (serve sessions record who sent it: ``proxy/callers.py``)."""
        return await up.call(method, params, on_id=on_id)

    async def _settled_call(self, up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Message:
        """A forwarded request; a handshake-era host is asked what a 2026-07-28 upstream's
        ``input_required`` answer asks for, and the request retried with the answers (``relay.settle``)."""
        if self.era == Era.MODERN:
            return await self._upstream_call(up, method, params, on_id)
        return await settle(lambda again: self._upstream_call(up, method, again, on_id), params,
                            lambda asked, question: self._input_for(up, asked, question))

    async def _input_for(self, up: Upstream, method: str, params: Message) -> Message:
        """One input request of an upstream's ``input_required`` answer, put to the host as that
        upstream's own request would be (configured roots, the declared capability, flow labels)."""
        message = {"method": method, "params": params}
        roots = self._configured_roots(up) if method == "roots/list" else None
        if roots is not None:
            return result(None, roots)
        capability = RELAYED_KIND.get(method)
        if capability is None or capability not in self.client_capabilities:
            return error(None, METHOD_NOT_FOUND, f"mcp-guard cannot relay {method} to this host")
        if not await self._upstream_brings(up, message):
            return error(None, INTERNAL_ERROR, f"mcp-guard cannot relay {method}: what it brings cannot be recorded")
        return await self.request_host(method, params)

    @staticmethod
    def _configured_roots(up: Upstream) -> Message | None:
        """The roots ``roots:`` gives this upstream (a fixed list, or none), or None: the host's."""
        roots = up.config.roots
        if isinstance(roots, tuple):
            return {"roots": [{"uri": "file://" + p, "name": p.rsplit("/", 1)[-1] or p} for p in roots]}
        return {"roots": []} if roots == "none" else None

    def _upstream_level(self, rank: int) -> int:
        """The log level to ask the upstreams for when this host asks for ``rank``."""
        return rank

    def request_on(self, upstream: Upstream) -> Any:
        """The host request (the latest) this session has in flight on ``upstream``, or None."""
        return next((rid for rid, (up, _) in reversed(self._upstream_ids.items()) if up is upstream), None)

    # ------------------------------------------------------------------ upstream side (UpstreamHandler)

    async def upstream_request(self, upstream: Upstream, message: Message) -> None:
        method = message.get("method")
        rid = message["id"]
        roots = self._configured_roots(upstream) if method == "roots/list" else None
        if roots is not None:
            await upstream.respond(result(rid, roots))
            return
        if self.era == Era.MODERN:
            if not await self._relay.offer(upstream, message):
                await upstream.refuse(rid, f"mcp-guard cannot relay {method} to this host outside a tool call")
            return
        capability = RELAYED_KIND.get(str(method))
        if capability is None or capability not in self.client_capabilities:
            await upstream.refuse(rid, f"mcp-guard cannot relay {method} to this host")
            return
        if not await self._upstream_brings(upstream, message):
            await upstream.refuse(rid, f"mcp-guard cannot relay {method}: what it brings cannot be recorded")
            return
        response = await self.request_host(str(method), message.get("params"))
        response["id"] = rid
        await upstream.respond(response)

    async def request_host(self, method: str, params: Message | None, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """Send a request to the host and wait for its whole answer message."""
        self._host_ids += 1
        hid = self._host_ids
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._host_pending[hid] = _HostRequest(fut)
        msg = request(hid, method, params)
        try:
            if self.era == Era.LEGACY and not self._host_initialized.is_set():
                await asyncio.wait_for(self._host_initialized.wait(), timeout)
            await self.send(msg)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            await self.send(notification("notifications/cancelled", {"requestId": hid, "reason": "timed out"}))
            return error(hid, INTERNAL_ERROR, f"the host did not answer {method} in time")
        finally:
            self._host_pending.pop(hid, None)

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def upstream_notification(self, upstream: Upstream, message: Message) -> None:
        method = message.get("method")
        if method == "notifications/tools/list_changed":
            # refreshing needs the upstream's read loop, which is the caller: never wait on it here
            self.later(self._refresh_tools(upstream))
            return
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/cancelled":
            # the upstream cancels a request it sent us; our host-facing ids are our own
            rid = params.get("requestId")
            pending = self._host_pending.get(rid) if isinstance(rid, int) and not isinstance(rid, bool) else None
            if pending is not None:
                pending.future.cancel()
            return
        if method in ("notifications/prompts/list_changed", "notifications/resources/list_changed"):
            self.owners.changed(method)
            if self.era == Era.MODERN:
                await self._list_changed(str(method))
                return
        elif method == "notifications/resources/updated":
            uri = params.get("uri")  # only about a resource this host may see now (a reload may have hidden it)
            if not isinstance(uri, str) or not self.router.shows(self.principal, self.chain, Kind.RESOURCE, f"{upstream.name}/{uri}"):
                return
            if self.era == Era.MODERN:
                await self._resource_updated(upstream, params)
                return
        if self.era == Era.MODERN and method == "notifications/message" and not self._wants_log(upstream, params):
            return  # 2026-07-28: log notifications only for requests that opted in
        if method == "notifications/message" and not self._at_level(params):
            return  # below the level this host asked for (a shared upstream may log more)
        if self.era == Era.MODERN and method == "notifications/progress":
            rebound = self._relay.progress(upstream, params)
            if rebound is None:
                return
            if rebound is not params:
                message = notification(str(method), rebound)
        if not await self._upstream_brings(upstream, message):
            return
        await self.send(message)

    async def _upstream_brings(self, upstream: Upstream, message: Message) -> bool:
        """An ``upstreams:`` labels entry: what the upstream sends the host brings its labels first;
        False (the message is dropped) when that cannot be recorded."""
        labels = self.ctx.policies.labels.upstream(upstream.name)
        if not labels:
            return True
        scope = scope_of(self.id, self.era, self.chain, self.principal)
        try:
            await self.pipeline.flows.add(scope, *what_it_brought(Brought(((labels, None),)), message.get("params"),
                                                                  f"upstream {upstream.name}", None, frozenset()))
        except StateError as exc:
            log.error("dropped %s from %s: its labels cannot be recorded (%s)", message.get("method"), upstream.name, exc)
            return False
        return True

    async def _refresh_tools(self, upstream: Upstream) -> None:
        try:
            await upstream.refresh_tools()
        except (RpcError, UpstreamError) as exc:
            log.warning("refreshing the tools of %s failed: %s", upstream.name, exc)
            return
        await self.upstream_changed(upstream)

    async def upstream_changed(self, upstream: Upstream) -> None:
        self.owners.changed("notifications/prompts/list_changed")  # (re)connected: its lists may differ
        self.owners.changed("notifications/resources/list_changed")
        if self._started is None or not self._started.done():
            return  # the first build happens once every upstream has had its first try
        await self._tools_changed()

    async def policies_changed(self, previous: PolicySet | None = None,
                               listings: dict[Kind, list[tuple[str, bool]]] | None = None) -> None:
        """After a policy reload: tell the host which of its lists (tools, prompts, resources) now
        show something else; ``previous`` is the policy set the reload replaced.  ``listings``
        holds what the upstreams list now, shared by sessions on the same upstreams (``serve``), so
        one reload asks them once, not once per caller."""
        before = self.router.cached_tools()
        after = self.visible_tools()
        if before is not None and [e.exposed for e in before] != [e.exposed for e in after]:
            await self._list_changed("notifications/tools/list_changed")
        if previous is None:
            return
        for method, kind in (("notifications/prompts/list_changed", Kind.PROMPT),
                             ("notifications/resources/list_changed", Kind.RESOURCE)):
            if not self._told(method):
                continue  # nobody would be told: do not ask the upstreams for their lists
            listing = None if listings is None else listings.get(kind)
            if listing is None:
                try:
                    listing = await self.router.listing(kind)
                except (RpcError, UpstreamError) as exc:
                    log.warning("after the policy reload, listing %s failed: %s", kind.value, exc)
                    continue
                if listings is not None:
                    listings[kind] = listing
            who, chain = self.principal, self.chain
            if self.router.seen(previous, who, chain, kind, listing) != self.router.seen(self.ctx.policies, who, chain, kind, listing):
                await self._list_changed(method)

    def _told(self, method: str) -> bool:
        """Whether ``_list_changed(method)`` reaches anyone: a handshake-era host, or a listener that asked."""
        return self.era == Era.LEGACY or any(method in methods for methods in self._listeners.values())

    async def _tools_changed(self) -> None:
        before = [e.definition for e in self.visible_tools()]
        self._rebuild_catalogue()
        after = [e.definition for e in self.visible_tools()]
        if before != after:
            await self._list_changed("notifications/tools/list_changed")

    # ------------------------------------------------------------------ shutdown

    async def drain(self, grace: float) -> None:
        """The host closed its input: let requests already received finish, for at most ``grace`` s."""
        pending = [t for rid, t in self._inflight.items() if not t.done() and rid not in self._listen_uris]
        for rid in list(self._listen_uris):  # open listens end with the host's input; they never finish
            if (task := self._inflight.get(rid)) is not None:
                task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace)

    async def close(self) -> None:
        self._relay.close()
        for task in list(self._inflight.values()):
            task.cancel()
        if self.hub is None:  # a hub's sessions share its upstreams; only the hub stops them
            await asyncio.gather(*(up.close() for up in self.upstreams.values()), return_exceptions=True)
