"""One host session: the message pump.

It reads what the host sends, answers the handshake (``proxy/handshake.py``), hands every request
to its handler — lists and mediated requests are resolved by ``proxy/routing.py`` and decided by
the call pipeline (``proxy/pipeline.py``) — and answers it.  A method it does not know is refused,
never forwarded.  Its requests in flight are kept in ``proxy/inflight.py`` (cancelled, attributed,
drained); what reaches the host besides answers goes through the back channel and the listens.
The upstreams are the hub's (``proxy/hub.py``): ``run`` builds one for its one session; ``serve``
hands each caller's session the shared hub and whom it speaks for (``proxy/speaks_for.py``).

Messages are dicts parsed once by the transport.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from mcp_guard.decision import Outcome, Verdict
from mcp_guard.errors import RpcError, UpstreamError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    REFUSED,
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
from mcp_guard.proxy.hub import Hub, Listings
from mcp_guard.proxy.inflight import Inflight
from mcp_guard.proxy.listen import Listens, Subscribed
from mcp_guard.proxy.relay import Relay
from mcp_guard.proxy.routing import Router
from mcp_guard.proxy.speaks_for import SelfAsserted, SpeaksFor
from mcp_guard.request import RequestContext, Target
from mcp_guard.upstreams.connection import Upstream

log = logging.getLogger("mcp_guard.session")

# the chain's expiry and revocation are checked for every request but these: ping says nothing,
# and tools/call is checked by the call pipeline itself (a refusal is then a tool result)
_CHAIN_CHECKED_LATER = frozenset({"ping", "tools/call"})
_STARTLESS = frozenset({"initialize", "server/discover", "ping"})  # answered before the upstreams are up
# enum members read on every call, bound once: on Python 3.11 ``Era.MODERN`` is a lookup through the enum
# metaclass's ``__getattr__`` hook (~750 instructions; a module global ~50)
_MODERN = Era.MODERN


class GuardSession:
    """One host session.  ``run``: it builds the hub and speaks for the config identity (or the
    grant chain it was started with).  ``serve``: many sessions share one hub, each speaking for
    the ``SpeaksFor`` it was handed (principal, chain, limit scope)."""

    back: BackChannel  # built on the router, which forwards through it

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
        self._self_asserted = SelfAsserted(ctx.config.identity)
        self._owns_hub = hub is None  # run: the session's own hub, stopped with it
        self.hub = hub = hub if hub is not None else Hub(ctx, self.profile)
        self.upstreams, self.catalogue, self.pipeline, self.owners = hub.upstreams, hub.catalogue, hub.pipeline, hub.owners
        self._relay = Relay()
        self.inflight = Inflight()
        self.router = Router(lambda: self.ctx.policies, self.upstreams, self.catalogue, self.owners, self.pipeline,
                             self._relay, self.inflight.track, lambda *call: self.back.forward(*call), partial(hub.level, self.id),
                             round_trips=hub.round_trips, brings=lambda up, message: self.back.brings(up, message))
        self.listens = Listens(self, hub, self.router)
        self.back = BackChannel(self, hub, self.router, self._relay, self.listens, self.inflight.where)
        self.subscribed = Subscribed(hub, self.router, self.inflight.where) if hub.shared else None
        self._loop: asyncio.AbstractEventLoop | None = None  # found once: on 3.11 each lookup is a getpid(2)
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
        return self._self_asserted.principal(self.profile.client_info)

    def _request(self, message: Message) -> RequestContext:
        profile = self.profile
        req = RequestContext(self.id, self.principal, self.chain, profile.era, profile.protocol_version, message,
                             profile.request_capabilities(message), profile.client_info, self.back.request_host, self.limit_scope)
        req.tell_host, req.session_key = self.send, self.key  # set, not passed: no keyword dict per request
        return req

    # ------------------------------------------------------------------ host side

    def accept(self, message: Any) -> Awaitable[None] | None:
        """``handle``'s synchronous entry (the stdio pump calls it as a line arrives): a well-formed
        handshake-era request is started here and None returned; anything else returns
        ``handle(message)``, for the pump to await in the host's order."""
        if type(message) is dict and "method" in message and self.profile.era != _MODERN:
            rid = message.get("id")
            if type(rid) in (str, int) and not era_rules.modern_request(message):
                self._begin(message)  # no era keys: nothing for ``profile.note`` to note
                return None
        return self.handle(message)

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
            self._start(message)
        elif is_notification(message):
            await self._host_notification(message)
        elif is_response(message):
            self.back.answered(message)
        elif "id" in message:
            await self.send(error(message.get("id"), INVALID_REQUEST, "Invalid Request"))

    def _start(self, message: Message) -> None:
        """A request the era's rules let through: noted, and answered by a task of its own."""
        self.profile.note(message)
        if self.profile.era == _MODERN:
            self.back.note_log_level(message)
        self._begin(message)

    def _begin(self, message: Message) -> None:
        """A request's task started (its era already noted)."""
        req = self._request(message)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self.inflight.begin(message["id"], self._loop.create_task(self._serve(req)))

    async def _era_refused(self, message: Message) -> bool:
        """A 2026-07-28 request the era's rules refuse (proxy/era_rules.py) is answered and audited
        here, before it is noted, decided or forwarded."""
        refusal = era_rules.check(message)
        if refusal is None:
            return False
        await self.pipeline.audit_refused(self._request(message), None, None, Verdict(Outcome.UNKNOWN if refusal.code == METHOD_NOT_FOUND else Outcome.DENY, f"mcp-guard refused a 2026-07-28 request: {refusal.message}"))
        await self.send(refusal.answer(message["id"]))
        return True

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
                if method not in _STARTLESS and not self.hub.up:
                    await self.hub.start()
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
                self.inflight.end(rid)
                self.back.log_levels.pop(rid, None)
            response = self.profile.shape(str(method), response)
            try:
                await self.host.send(response)
            finally:  # the span's outcome is noted after the write: the host does not wait for it
                traced.respond(response)
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
            await self.inflight.cancel(rid, params)
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
        await self.hub.start()
        self._check_collisions()
        return result(req.message["id"], self.profile.initialize_result(self.upstreams.values()))

    async def _discover(self, req: RequestContext) -> Message:
        await self.hub.start()
        self._check_collisions()
        return result(req.message["id"], self.profile.discover_result(self.upstreams.values()))

    def _check_collisions(self) -> None:
        if collisions := self.catalogue.collisions():
            self.fatal = "mcp-guard cannot start: " + "; ".join(collisions)
            raise RpcError(INTERNAL_ERROR, self.fatal)

    async def _ping(self, req: RequestContext) -> Message:
        return result(req.message["id"], {})

    def tool_names(self) -> list[str]:
        """Every catalogued tool as ``UPSTREAM/TOOL`` (for warming a freshly loaded policy set)."""
        return self.hub.tool_names()

    # ------------------------------------------------------------------ what the hub hands this session (Sink)

    def visible_tools(self) -> list[Target]:
        return self.router.visible_tools(self.principal, self.chain)

    async def deliver(self, upstream: Upstream, message: Message) -> None:
        await self.back.deliver(upstream, message)

    async def relay_request(self, upstream: Upstream, message: Message) -> None:
        await self.back.relay_request(upstream, message)

    async def on_behalf(self, upstream: Upstream, work: Awaitable[None]) -> None:
        await self.inflight.on_behalf(upstream, work)

    def subscribed_to(self, upstream: str, uri: str) -> bool:
        """Whether this session holds ``uri`` of ``upstream``: by ``resources/subscribe`` (handshake
        era) or by an open ``subscriptions/listen`` (2026-07-28)."""
        return (self.subscribed is not None and self.subscribed.has(upstream, uri)) or self.listens.hears(upstream, uri)

    async def list_changed(self, method: str) -> None:
        await self.listens.list_changed(method)

    async def policies_changed(self, previous: PolicySet | None = None, listings: Listings | None = None) -> None:
        """After a policy reload: tell the host which of its lists changed (``Listens``)."""
        await self.listens.policies_changed(previous, listings)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, grace: float, hung_up: Awaitable[None]) -> None:
        """The host closed its input: let requests already received finish, for at most ``grace`` s,
        or until ``hung_up`` says the host closed its output too; open listens end with the input."""
        await self.inflight.drain(grace, hung_up, endless=self.listens.uris)

    async def close(self) -> None:
        """Closed, expired or evicted: what only this session held upstream (resource
        subscriptions, a lower log level) is given back; ``run``'s session stops its hub."""
        self.hub.detach(self.id, self.subscribed.drop() if self.subscribed is not None else [], self.router.send_level)
        self._relay.close()
        self.inflight.close()
        if self._owns_hub:  # a shared hub's sessions share its upstreams; only its owner stops them
            await self.hub.close()
