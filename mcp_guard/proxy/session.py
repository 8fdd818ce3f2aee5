"""One host session: the message pump.

It reads what the host sends, answers the handshake (``proxy/handshake.py``), hands every request
to its handler — lists and mediated requests are resolved by ``proxy/routing.py`` and decided by
the call pipeline (``proxy/pipeline.py``) — and relays protocol plumbing (cancellation, progress,
upstream sampling/elicitation/roots) to whoever caused it.  A method it does not know is refused,
never forwarded.  The upstreams are the hub's (``proxy/hub.py``): ``run`` builds one for its one
session; ``serve`` hands each caller's session the shared hub and whom it speaks for (``SpeaksFor``).

Messages are dicts parsed once by the transport.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_guard.decision import Outcome, Verdict
from mcp_guard.errors import RpcError, UpstreamError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
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
    result,
)
from mcp_guard.policy import PolicySet
from mcp_guard.proxy import era_rules
from mcp_guard.proxy.backchannel import BackChannel
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.handshake import HostProfile
from mcp_guard.proxy.hub import Hub, Listings, configured_roots
from mcp_guard.proxy.listen import Listens, Subscribed
from mcp_guard.proxy.relay import KIND as RELAYED_KIND
from mcp_guard.proxy.relay import Relay, settle
from mcp_guard.proxy.routing import Router
from mcp_guard.request import RequestContext, Target
from mcp_guard.upstreams.connection import Upstream

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain

log = logging.getLogger("mcp_guard.session")

# the chain's expiry and revocation are checked for every request but these: ping says nothing,
# and tools/call is checked by the call pipeline itself (a refusal is then a tool result)
_CHAIN_CHECKED_LATER = frozenset({"ping", "tools/call"})
_STARTLESS = frozenset({"initialize", "server/discover", "ping"})  # answered before the upstreams are up


@dataclass(frozen=True)
class SpeaksFor:
    """Who a ``serve`` caller's session speaks for: the verified bearer token's principal (a grant chain or
    an OAuth access token), never the config identity or the client's own name; ``limit_scope`` is
    what per_minute/per_session limits count by (the principal, so a new session or another
    replica does not start them afresh)."""

    principal: Principal
    chain: GrantChain | None
    limit_scope: str
    session_key: str = ""  # the session's name on every replica (a digest of its table key, serve/table.py)


class GuardSession:
    """One host session.  ``run``: it builds the hub and speaks for the config identity (or the
    grant chain it was started with).  ``serve``: many sessions share one hub, each speaking for
    the ``SpeaksFor`` it was handed (principal, chain, limit scope)."""

    def __init__(self, ctx: GuardContext, host: HostTransport, *, hub: Hub | None = None, speaks_for: SpeaksFor | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self.id = uuid.uuid4().hex
        self.profile = HostProfile()
        self.speaks_for = speaks_for
        # the session's name on every serve replica (else its id): its labels and remembered approvals are kept by it
        self.key = speaks_for.session_key if speaks_for is not None and speaks_for.session_key else self.id
        self.chain = speaks_for.chain if speaks_for is not None else ctx.chain
        self.limit_scope = speaks_for.limit_scope if speaks_for is not None else self.id  # what per_minute/per_session limits count by
        self._owns_hub = hub is None  # run: the session's own hub, stopped with it
        self.hub = hub = hub if hub is not None else Hub(ctx, self.profile)
        self.upstreams, self.catalogue, self.pipeline, self.owners = hub.upstreams, hub.catalogue, hub.pipeline, hub.owners
        self._relay = Relay()
        self.router = Router(lambda: self.ctx.policies, self.upstreams, self.catalogue, self.owners, self.pipeline,
                             self._relay, self._track, self._settled_call, self._upstream_level)
        self._upstream_ids: dict[Any, tuple[Upstream, int]] = {}  # host request id -> where it went
        self.listens = Listens(self, hub, self.router)
        self.back = BackChannel(self, hub, self.router, self._relay, self.listens, self._upstream_ids)
        self.subscribed = Subscribed(hub, self.router, self._upstream_ids.get) if hub.shared else None
        self._inflight: dict[Any, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # found once: on 3.11 each lookup is a getpid(2)
        self._principal: tuple[Any, Principal] | None = None
        self.fatal: str | None = None  # set when the guard must not go on (a start-up error)
        self.on_fatal: Callable[[], None] | None = None
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

    @property
    def client_capabilities(self) -> Message:
        return self.profile.client_capabilities

    @property
    def principal(self) -> Principal:
        if self.speaks_for is not None:
            return self.speaks_for.principal
        if self.chain is not None:
            return self.chain.principal
        ident = self.ctx.config.identity
        agent = ident.agent or str(self.profile.client_info.get("name") or "unknown-agent")
        known = self._principal
        if known is None or known[0] != agent:  # built once per agent name, not per request
            known = self._principal = (agent, Principal(user=ident.user or "unknown-user", agents=(agent,), purpose=ident.purpose, verified=False))
        return known[1]

    def _request(self, message: Message) -> RequestContext:
        profile = self.profile
        return RequestContext(self.id, self.principal, self.chain, profile.era, profile.protocol_version, message,
                              profile.request_capabilities(message), profile.client_info, self.request_host, self.limit_scope,
                              tell_host=self.send, session_key=self.key)

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
                self.back.note_log_level(message)
            req = self._request(message)
            loop = self._loop or self._running_loop()
            task = loop.create_task(self._serve(req))
            self._inflight[message["id"]] = task
        elif is_notification(message):
            await self._host_notification(message)
        elif is_response(message):
            self.back.answered(message)
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
                self.back.log_levels.pop(rid, None)
            response = self.profile.shape(str(method), response)
            traced.respond(response)
            await self.send(response)
            if self.fatal is not None and self.on_fatal is not None:
                self.on_fatal()  # e.g. a tool name collision: answered, now the guard stops

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
            self.back.initialized.set()
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
        roots = configured_roots(up) if method == "roots/list" else None
        if roots is not None:
            return result(None, roots)
        capability = RELAYED_KIND.get(method)
        if capability is None or capability not in self.client_capabilities:
            return error(None, METHOD_NOT_FOUND, f"mcp-guard cannot relay {method} to this host")
        if not await self.back.brings(up, message):
            return error(None, INTERNAL_ERROR, f"mcp-guard cannot relay {method}: what it brings cannot be recorded")
        return await self.request_host(method, params)

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
        """Whether this session holds ``uri`` of ``upstream``: by ``resources/subscribe`` (handshake
        era) or by an open ``subscriptions/listen`` (2026-07-28)."""
        return (self.subscribed is not None and self.subscribed.has(upstream, uri)) or self.listens.hears(upstream, uri)

    async def list_changed(self, method: str) -> None:
        await self.listens.list_changed(method)

    async def policies_changed(self, previous: PolicySet | None = None, listings: Listings | None = None) -> None:
        """After a policy reload: tell the host which of its lists changed (``Listens``)."""
        await self.listens.policies_changed(previous, listings)

    # ------------------------------------------------------------------ what the hub hands this session (Sink)

    async def deliver(self, upstream: Upstream, message: Message) -> None:
        await self.back.deliver(upstream, message)

    async def relay_request(self, upstream: Upstream, message: Message) -> None:
        await self.back.relay_request(upstream, message)

    async def request_host(self, method: str, params: Message | None, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """Send a request to the host and wait for its whole answer message."""
        return await self.back.request_host(method, params, timeout)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, grace: float, hung_up: Awaitable[None]) -> None:
        """The host closed its input: let requests already received finish, for at most ``grace`` s,
        or until ``hung_up`` says the host closed its output too (nobody is left to answer)."""
        listening = self.listens.uris
        pending: list[asyncio.Future[Any]] = [t for rid, t in self._inflight.items() if not t.done() and rid not in listening]
        for rid in list(listening):  # open listens end with the host's input; they never finish
            if (task := self._inflight.get(rid)) is not None:
                task.cancel()
        gone: asyncio.Future[Any] = asyncio.ensure_future(hung_up)
        try:
            if pending:
                finished: asyncio.Future[Any] = asyncio.gather(*pending, return_exceptions=True)
                await asyncio.wait([finished, gone], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()

    async def close(self) -> None:
        """Closed, expired or evicted: what only this session held upstream (resource
        subscriptions, a lower log level) is given back; ``run``'s session stops its hub."""
        self.hub.detach(self.id, self.subscribed.drop() if self.subscribed is not None else [], self.router.send_level)
        self._relay.close()
        for task in list(self._inflight.values()):
            task.cancel()
        if self._owns_hub:  # a shared hub's sessions share its upstreams; only its owner stops them
            await self.hub.close()
