"""One host session: the message pump.

It reads what the host sends, answers the handshake (``proxy/handshake.py``), hands every request
to its handler — lists and mediated requests are resolved by ``proxy/routing.py`` and decided by
the call pipeline (``proxy/pipeline.py``) — and relays protocol plumbing (cancellation, progress,
upstream sampling/elicitation/roots) to whoever caused it.  A method it does not know is refused,
never forwarded.  The upstreams are the hub's (``proxy/hub.py``): ``run`` builds one for its one
session; ``serve`` hands each caller's session the shared hub and the ``Caller`` it speaks for.

Messages are dicts parsed once by the transport.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_guard.decision import Kind, Outcome, Verdict
from mcp_guard.errors import RpcError, StateError, UpstreamError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    META_LOG_LEVEL,
    METHOD_NOT_FOUND,
    REFUSED,
    RELATED_REQUEST,
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
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.flow import scope_of, what_it_brought
from mcp_guard.proxy.handshake import HostProfile
from mcp_guard.proxy.hub import Hub, Listings
from mcp_guard.proxy.listen import Listens, Subscribed
from mcp_guard.proxy.relay import KIND as RELAYED_KIND
from mcp_guard.proxy.relay import Relay
from mcp_guard.proxy.routing import LOG_LEVELS, Router
from mcp_guard.request import RequestContext, Target
from mcp_guard.upstreams.connection import Upstream

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain

log = logging.getLogger("mcp_guard.session")

# the chain's expiry and revocation are checked for every request but these: ping says nothing,
# and tools/call is checked by the call pipeline itself (a refusal is then a tool result)
_CHAIN_CHECKED_LATER = frozenset({"ping", "tools/call"})
_STARTLESS = frozenset({"initialize", "server/discover", "ping"})  # answered before the upstreams are up


@dataclass
class _HostRequest:
    """A request the guard sent to the host on behalf of an upstream (sampling, elicitation, roots)."""

    future: asyncio.Future[Message]


@dataclass(frozen=True)
class Caller:
    """Who a ``serve`` session speaks for: the verified bearer token's principal (a grant chain or
    an OAuth access token), never the config identity or the client's own name; ``limit_scope`` is
    what per_minute/per_session limits count by (the principal, so a new session or another
    replica does not start them afresh)."""

    principal: Principal
    chain: GrantChain | None
    limit_scope: str


class GuardSession:
    """One host session.  ``run``: it builds the hub and speaks for the config identity (or the
    grant chain it was started with).  ``serve``: many sessions share one hub, each speaking for
    the ``Caller`` it was handed."""

    def __init__(self, ctx: GuardContext, host: HostTransport, *, hub: Hub | None = None, caller: Caller | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self.id = uuid.uuid4().hex
        self.profile = HostProfile()
        self.caller = caller
        self.chain = caller.chain if caller is not None else ctx.chain
        self.limit_scope = caller.limit_scope if caller is not None else self.id  # what per_minute/per_session limits count by
        self._owns_hub = hub is None  # run: the session's own hub, stopped with it
        self.hub = hub = hub if hub is not None else Hub(ctx, self.profile)
        self.upstreams, self.catalogue, self.pipeline, self.owners = hub.upstreams, hub.catalogue, hub.pipeline, hub.owners
        self._relay = Relay()
        self.router = Router(lambda: self.ctx.policies, self.upstreams, self.catalogue, self.owners, self.pipeline,
                             self._relay, self._track, self._upstream_call, self._upstream_level)
        self._upstream_ids: dict[Any, tuple[Upstream, int]] = {}  # host request id -> where it went
        self.listens = Listens(self, hub, self.router)
        self.subscribed = Subscribed(hub, self.router, self._upstream_ids.get) if hub.shared else None
        self._inflight: dict[Any, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # found once: on 3.11 each lookup is a getpid(2)
        self._log_levels: dict[Any, int] = {}  # 2026-07-28: host request id -> the log level it opted in to
        self._host_ids = 0
        self._host_pending: dict[int, _HostRequest] = {}
        self._agent_default: str | None = None
        self._principal: tuple[Any, Principal] | None = None
        self.fatal: str | None = None  # set when the guard must not go on (a start-up error)
        self.on_fatal: Callable[[], None] | None = None
        self._host_initialized = asyncio.Event()  # legacy hosts take requests only after `initialized`
        hub.attach(self)
        r = self.router
        subscription = self.subscribed.request if self.subscribed is not None else r.resource_request
        self._handlers: dict[str, Callable[[RequestContext], Awaitable[Message]]] = {
            "initialize": self._initialize,
            "server/discover": self._discover,
            "ping": self._ping,
            "tools/list": r.tools_list,
            "tools/call": r.tools_call,
            "resources/list": r.resources_list,
            "resources/templates/list": r.templates_list,
            "resources/read": r.resource_request,
            "resources/subscribe": subscription,
            "resources/unsubscribe": subscription,
            "prompts/list": r.prompts_list,
            "prompts/get": r.prompts_get,
            "completion/complete": r.complete,
            "logging/setLevel": r.set_level,
            "subscriptions/listen": self.listens.listen,
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
        if self.caller is not None:
            return self.caller.principal
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
            await self.hub.roots_changed(params)
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

    # ------------------------------------------------------------------ the hub

    async def start(self) -> None:
        """Start the upstreams (once; the sessions of one hub share its start)."""
        await self.hub.start()

    async def _ensure_started(self) -> None:
        await self.hub.start()

    def tool_names(self) -> list[str]:
        """Every catalogued tool as ``UPSTREAM/TOOL`` (for warming a freshly loaded policy set)."""
        return self.hub.tool_names()

    def visible_tools(self) -> list[Target]:
        return self.router.visible_tools(self.principal, self.chain)

    def _track(self, host_id: Any, upstream: Upstream, upstream_id: int) -> None:
        self._upstream_ids[host_id] = (upstream, upstream_id)

    async def _upstream_call(self, up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Message:
        return await self.hub.call(self.id, up, method, params, on_id)

    def _upstream_level(self, rank: int) -> int:
        return self.hub.level(self.id, rank)

    def request_on(self, upstream: Upstream) -> Any:
        """The host request (the latest) this session has in flight on ``upstream``, or None."""
        return next((rid for rid, (up, _) in reversed(self._upstream_ids.items()) if up is upstream), None)

    async def on_behalf(self, upstream: Upstream, work: Awaitable[None]) -> None:
        """Run what ``upstream`` sent with this session's request on it as the related request, so a
        transport with a stream per request sends the outcome there."""
        token = RELATED_REQUEST.set(self.request_on(upstream))
        try:
            await work
        finally:
            RELATED_REQUEST.reset(token)

    def subscribed_to(self, upstream: str, uri: str) -> bool:
        return self.subscribed is not None and self.subscribed.has(upstream, uri)

    async def list_changed(self, method: str) -> None:
        await self.listens.list_changed(method)

    async def policies_changed(self, previous: PolicySet | None = None, listings: Listings | None = None) -> None:
        """After a policy reload: tell the host which of its lists changed (``Listens``)."""
        await self.listens.policies_changed(previous, listings)

    # ------------------------------------------------------------------ what the hub hands this session (Sink)

    async def relay_request(self, upstream: Upstream, message: Message) -> None:
        """An upstream's question (sampling, elicitation, roots) for this host: a handshake-era host
        is asked directly, a 2026-07-28 host inside the tool call it belongs to (``proxy/relay.py``)."""
        method = message.get("method")
        rid = message["id"]
        if self.era == Era.MODERN:
            if not await self._upstream_brings(upstream, message):
                await upstream.refuse(rid, f"mcp-guard cannot relay {method}: what it brings cannot be recorded")
                return
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

    async def deliver(self, upstream: Upstream, message: Message) -> None:
        """An upstream notification for this host, if it is one this host should hear, once what it
        brings is recorded."""
        method = message.get("method")
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
            if self.era == Era.MODERN:
                await self.listens.list_changed(str(method))
                return
        elif method == "notifications/resources/updated":
            uri = params.get("uri")  # only about a resource this host may see now (a reload may have hidden it)
            if not isinstance(uri, str) or not self.router.shows(self.principal, self.chain, Kind.RESOURCE, f"{upstream.name}/{uri}"):
                return
            if self.era == Era.MODERN:
                await self.listens.resource_updated(upstream, params)
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

    # ------------------------------------------------------------------ shutdown

    async def drain(self, grace: float) -> None:
        """The host closed its input: let requests already received finish, for at most ``grace`` s."""
        listening = self.listens.uris
        pending = [t for rid, t in self._inflight.items() if not t.done() and rid not in listening]
        for rid in list(listening):  # open listens end with the host's input; they never finish
            if (task := self._inflight.get(rid)) is not None:
                task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace)

    async def close(self) -> None:
        """Closed, expired or evicted: what only this session held upstream (resource
        subscriptions, a lower log level) is given back; ``run``'s session stops its hub."""
        self.hub.detach(self.id, self.subscribed.drop() if self.subscribed is not None else [], self.router.send_level)
        self._relay.close()
        for task in list(self._inflight.values()):
            task.cancel()
        if self._owns_hub:  # a shared hub's sessions share its upstreams; only its owner stops them
            await self.hub.close()
