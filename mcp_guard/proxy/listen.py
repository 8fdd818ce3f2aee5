"""What a host is told when something it sees changes: the 2026-07-28 ``subscriptions/listen``
requests (list changes and resource updates, each on the listen that asked for it), a
handshake-era host's list-change notifications, and what a policy reload changed in its lists."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from mcp_guard.decision import Kind, Outcome, evaluate
from mcp_guard.errors import RpcError, UpstreamError
from mcp_guard.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    META_SUBSCRIPTION_ID,
    METHOD_NOT_FOUND,
    Era,
    Message,
    notification,
    result,
)
from mcp_guard.policy import PolicySet
from mcp_guard.proxy.hub import Hub, Listings
from mcp_guard.proxy.routing import Router
from mcp_guard.request import RequestContext, Target
from mcp_guard.upstreams.connection import Status, Upstream

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain
    from mcp_guard.identity import Principal

log = logging.getLogger("mcp_guard.session")

# 2026-07-28 subscriptions/listen filter -> the list-change notification it asks for
_LISTEN_FILTERS = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
MAX_LISTENS = 16  # open subscriptions/listen requests per session: each holds a task until cancelled
MAX_RESOURCE_SUBSCRIPTIONS = 256  # URIs one subscriptions/listen may ask for (each may cost an upstream request)


class Host(Protocol):
    """What of its session a ``Listens`` (and a ``BackChannel``) reads: who the host is, what it
    can be asked, and how to write to it."""

    id: str
    key: str  # the session's name on every serve replica (its labels are kept by it)
    chain: GrantChain | None

    @property
    def era(self) -> Era | None: ...

    @property
    def client_capabilities(self) -> Message: ...

    @property
    def principal(self) -> Principal: ...

    async def send(self, message: Message) -> None: ...

    def visible_tools(self) -> list[Target]: ...


class Listens:
    """One session's open listens and list-change notices."""

    def __init__(self, host: Host, hub: Hub, router: Router) -> None:
        self.host = host
        self.hub = hub
        self.router = router
        self.listeners: dict[Any, frozenset[str]] = {}  # open listen request id -> what it asked for
        # every open listen request id (registered before its first await) -> the (upstream, uri)
        # resource subscriptions it holds
        self.uris: dict[Any, frozenset[tuple[str, str]]] = {}

    async def listen(self, req: RequestContext) -> Message:
        """``subscriptions/listen``: acknowledge the list changes the guard honours, then stay open
        (no answer) until the host cancels it or goes away; list changes are sent on it meanwhile."""
        if req.era != Era.MODERN:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: subscriptions/listen")
        wanted = req.params.get("notifications")
        if not isinstance(wanted, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: subscriptions/listen needs a `notifications` object")
        if len(self.uris) >= MAX_LISTENS:
            raise RpcError(INVALID_REQUEST, f"mcp-guard keeps at most {MAX_LISTENS} subscriptions/listen requests open; cancel one first")
        uris = wanted.get("resourceSubscriptions", [])
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise RpcError(INVALID_PARAMS, "Invalid params: `resourceSubscriptions` must be a list of resource URIs")
        if len(uris) > MAX_RESOURCE_SUBSCRIPTIONS:
            raise RpcError(INVALID_PARAMS, f"Invalid params: at most {MAX_RESOURCE_SUBSCRIPTIONS} `resourceSubscriptions` per listen")
        honoured: dict[str, Any] = {key: True for key in _LISTEN_FILTERS if wanted.get(key) is True}
        rid = req.message["id"]
        self.uris[rid] = frozenset()
        try:
            held = await self._subscribe(req, rid, list(dict.fromkeys(uris)))
            if held:
                honoured["resourceSubscriptions"] = [uri for _, uri in held]
            self.listeners[rid] = frozenset(_LISTEN_FILTERS[key] for key in honoured if key in _LISTEN_FILTERS)
            # the acknowledgement is written before any change can be (the transport writes at once)
            await self.host.send(notification("notifications/subscriptions/acknowledged",
                                              {"_meta": {META_SUBSCRIPTION_ID: rid}, "notifications": honoured}))
            await asyncio.Event().wait()  # ends only by cancellation
        finally:
            self.listeners.pop(rid, None)
            await self._unsubscribe(self.uris.pop(rid, frozenset()))
        raise AssertionError("unreachable")

    async def _subscribe(self, req: RequestContext, rid: Any, uris: list[str]) -> list[tuple[str, str]]:
        """Subscribe a listen to the resources it asked for that this session may see, on upstreams
        that offer subscriptions (``resources/subscribe``, once per resource however many listens
        hold it).  A hidden or unknown URI is audited as unknown and left out of the acknowledgement,
        exactly like one no upstream has; a visible one that a read of would not simply allow
        (a deny on its URI, or an approval) is audited with that decision and left out too."""
        held: list[tuple[str, str]] = []
        hub = self.hub
        for uri in uris:
            try:
                target = await self.router.resource_target(req, uri)
            except RpcError:
                continue  # hidden or unknown (audited by resource_target)
            verdict = evaluate(hub.ctx.policies, req.chain, req.principal, target.qualified, {"uri": uri}, None,
                               hub.ctx.clock(), kind=Kind.RESOURCE, paths=hub.pipeline.paths(target.upstream))
            if verdict.decision is not Outcome.ALLOW:  # denied, or a read would need a person: no standing watch
                await hub.pipeline.audit_refused(req, Kind.RESOURCE, uri, verdict, target.upstream)
                continue
            up = hub.upstreams.get(target.upstream)
            caps = up.capabilities.get("resources") if up is not None else None
            if up is None or up.era != Era.LEGACY or up.status != Status.READY or not (isinstance(caps, dict) and caps.get("subscribe")):
                continue  # an upstream that cannot be subscribed: not honoured, as the acknowledgement says
            key = (up.name, uri)
            if not hub.subscriptions.held(key):
                try:
                    await up.request("resources/subscribe", {"uri": uri})
                except (RpcError, UpstreamError) as exc:
                    log.info("resources/subscribe %s on %s failed: %s", uri, up.name, exc)
                    continue
            hub.subscriptions.hold(key)
            self.uris[rid] = self.uris[rid] | {key}
            held.append(key)
        return held

    async def _unsubscribe(self, keys: Iterable[tuple[str, str]]) -> None:
        """A listen ended: drop its resource subscriptions upstream once nothing else holds them."""
        subscriptions = self.hub.subscriptions
        for key in keys:
            if subscriptions.release(key):
                await subscriptions.unsubscribe(self.hub.upstreams.get(key[0]), key[1])

    def hears(self, upstream: str, uri: str) -> bool:
        """Whether an open listen is subscribed to ``uri`` of ``upstream``."""
        return any((upstream, uri) in keys and rid in self.listeners for rid, keys in self.uris.items())

    async def resource_updated(self, upstream: Upstream, params: Message) -> None:
        """2026-07-28: a resource update goes only to the listens subscribed to that URI."""
        key = (upstream.name, params.get("uri"))
        out = {k: v for k, v in params.items() if k != "_meta"}
        for rid, keys in list(self.uris.items()):
            if key in keys and rid in self.listeners:
                await self.host.send(notification("notifications/resources/updated", {**out, "_meta": {META_SUBSCRIPTION_ID: rid}}))

    async def list_changed(self, method: str) -> None:
        """Tell the host a list it sees changed: a handshake-era host directly, a 2026-07-28 host on
        each open ``subscriptions/listen`` that asked for it (and nowhere else)."""
        if self.host.era == Era.LEGACY:
            await self.host.send(notification(method))
            return
        for rid, methods in list(self.listeners.items()):
            if method in methods:
                await self.host.send(notification(method, {"_meta": {META_SUBSCRIPTION_ID: rid}}))

    def told(self, method: str) -> bool:
        """Whether ``list_changed(method)`` reaches anyone: a handshake-era host, or a listener that asked."""
        return self.host.era == Era.LEGACY or any(method in methods for methods in self.listeners.values())

    async def policies_changed(self, previous: PolicySet | None = None, listings: Listings | None = None) -> None:
        """After a policy reload: tell the host which of its lists (tools, prompts, resources) now
        show something else; ``previous`` is the policy set the reload replaced.  ``listings``
        holds what the upstreams list now, shared by sessions on the same upstreams (``serve``), so
        one reload asks them once, not once per caller."""
        before = self.router.cached_tools()
        after = self.host.visible_tools()
        if before is not None and [e.exposed for e in before] != [e.exposed for e in after]:
            await self.list_changed("notifications/tools/list_changed")
        if previous is None:
            return
        for method, kind in (("notifications/prompts/list_changed", Kind.PROMPT),
                             ("notifications/resources/list_changed", Kind.RESOURCE)):
            if not self.told(method):
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
            who, chain = self.host.principal, self.host.chain
            if self.router.seen(previous, who, chain, kind, listing) != self.router.seen(self.hub.ctx.policies, who, chain, kind, listing):
                await self.list_changed(method)




class Subscribed:
    """``serve``: the resources one caller subscribed to with ``resources/subscribe``.  Each is
    counted with every other holder of the same upstream subscription (``UpstreamSubscriptions``):
    the upstream is asked to drop it only when the last goes."""

    def __init__(self, hub: Hub, router: Router, where: Callable[[Any], tuple[Upstream, int] | None]) -> None:
        self.hub = hub
        self.router = router
        self._where = where  # host request id -> the upstream it went to (while it is served)
        self.uris: dict[str, set[str]] = {}  # upstream -> resource URIs this caller subscribed to

    def has(self, upstream: str, uri: str) -> bool:
        return uri in self.uris.get(upstream, ())

    async def request(self, req: RequestContext) -> Message:
        """``resources/subscribe`` and ``resources/unsubscribe``.  An unsubscribe is resolved and
        decided first (hidden = unknown, audited), so whether some other caller holds the URI never
        shows in the answer."""
        uri = req.params.get("uri")
        if req.method == "resources/unsubscribe" and isinstance(uri, str):
            return await self._release(req, uri)
        response = await self.router.resource_request(req)
        where = self._where(req.message["id"])
        if req.method == "resources/subscribe" and "result" in response and isinstance(uri, str) and where is not None:
            uris = self.uris.setdefault(where[0].name, set())
            if uri not in uris:
                uris.add(uri)
                self.hub.subscriptions.hold((where[0].name, uri))
        return response

    async def _release(self, req: RequestContext, uri: str) -> Message:
        subscriptions = self.hub.subscriptions
        mine = next((up for up, uris in self.uris.items() if uri in uris), None)
        last = mine is not None and subscriptions.release((mine, uri))  # given back below if refused
        if mine is not None:
            self.uris[mine].discard(uri)
        ok = False
        try:
            if last:  # this caller was its last holder: the unsubscribe goes upstream
                response = await self.router.resource_request(req)
            else:  # another caller's or still shared: never dropped upstream on this caller's behalf
                response = await self.router.resource_request(req, answer=lambda: result(req.message["id"], {}))
            ok = "result" in response
        finally:
            if mine is not None and not ok:  # refused or failed: still held
                self.uris[mine].add(uri)
                subscriptions.hold((mine, uri))
        return response

    def drop(self) -> list[tuple[str, str]]:
        """Every subscription this caller holds, forgotten here (the hub counts them down)."""
        held = [(up, uri) for up, uris in self.uris.items() for uri in uris]
        self.uris.clear()
        return held


__all__ = ["MAX_LISTENS", "MAX_RESOURCE_SUBSCRIPTIONS", "Host", "Listens", "Subscribed"]
