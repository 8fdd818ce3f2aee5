"""The hub: the upstream side of a guard, shared by the sessions that use it.

It owns the upstream connections, the catalogue, who owns which name, the upstream resource
subscriptions and the start, and it is the one ``UpstreamHandler``: what an upstream sends is
handed to the session it belongs to.  ``run`` has one session on its hub, so everything goes to
it; ``serve`` has many (``shared``), and a message goes only where it can be attributed
(``proxy/callers.py``): progress by token, log messages and questions to the one caller with
requests in flight there, list changes to every caller that may see the change, resource updates
to the callers that subscribed.  A session reaches the hub only through ``call`` and ``level``;
the hub reaches a session only through the small ``Sink`` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from mcp_guard.decision import Kind
from mcp_guard.errors import RpcError, UpstreamError
from mcp_guard.jsonrpc import Message, notification, result
from mcp_guard.policy import PolicySet
from mcp_guard.proxy.callers import Callers
from mcp_guard.proxy.catalogue import Catalogue
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.handshake import HostProfile
from mcp_guard.proxy.owners import Owners
from mcp_guard.proxy.pipeline import Pipeline
from mcp_guard.proxy.roundtrip import RoundTrips, configured_roots
from mcp_guard.upstreams.connection import Status, Upstream

if TYPE_CHECKING:
    from mcp_guard.request import Target

log = logging.getLogger("mcp_guard.hub")

Listings = dict[Kind, list[tuple[str, bool]]]


class Sink(Protocol):
    """What the hub needs of a session: somewhere to deliver what an upstream sent."""

    id: str

    async def deliver(self, upstream: Upstream, message: Message) -> None:
        """An upstream notification, filtered and labelled for this session's host."""

    async def relay_request(self, upstream: Upstream, message: Message) -> None:
        """An upstream request (sampling, elicitation, roots) put to this session's host."""

    async def on_behalf(self, upstream: Upstream, work: Awaitable[None]) -> None:
        """Run ``work`` as part of this session's request in flight on ``upstream``."""

    async def list_changed(self, method: str) -> None: ...

    def visible_tools(self) -> list[Target]: ...

    def subscribed_to(self, upstream: str, uri: str) -> bool: ...

    async def policies_changed(self, previous: PolicySet | None = None, listings: Listings | None = None) -> None: ...


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


class Hub:
    """The upstream side of one guard.  ``profile`` is what the upstreams are told the host can do
    (``run``: its one host's; ``serve``: what every caller can be asked, ``RELAYED_TO_CALLERS``)."""

    def __init__(self, ctx: GuardContext, profile: HostProfile, *, shared: bool = False) -> None:
        self.ctx = ctx
        self.profile = profile
        self.shared = shared
        self.upstreams = {name: Upstream(cfg, self, telemetry=ctx.telemetry) for name, cfg in ctx.config.upstreams.items()}
        self.catalogue = Catalogue(ctx.pins, ctx.config.pinning)
        self.pipeline = Pipeline(ctx, self.upstreams)
        self.owners = Owners()
        self.round_trips = RoundTrips(ctx, per_session=not shared)  # a 2026-07-28 upstream's input_required, sealed for the host
        self.subscriptions = UpstreamSubscriptions()
        self.callers = Callers()  # serve: which session each forwarded request belongs to
        self.sessions: dict[str, Sink] = {}  # session id -> session, in the order they came
        self.levels: dict[str, int] = {}  # session id -> the log level it asked for
        self._started: asyncio.Task[None] | None = None
        self.up = False  # the start succeeded (``start``)
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ sessions

    def attach(self, session: Sink) -> None:
        self.sessions[session.id] = session

    def detach(self, session: str, held: list[tuple[str, str]], send_level: Callable[[int], Awaitable[None]]) -> None:
        """A session closed, expired or was evicted: what only it held upstream (the resource
        subscriptions ``held``, a lower log level, asked for with ``send_level``) is given back,
        in the background (closing a session never waits on an upstream)."""
        self.sessions.pop(session, None)
        last = [key for key in held if self.subscriptions.release(key)]  # counted now, told upstream later
        level = self.level_released(session)
        if self.shared and (last or level is not None):
            self.later(self._give_back(last, level, send_level))

    def call(self, session: str, up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Awaitable[Message]:
        """Forward a request for ``session`` (serve records who sent it: ``proxy/callers.py``); the
        awaitable is handed back as it is, so forwarding adds no coroutine of its own."""
        if self.shared:
            return self.callers.forward(session, up, method, params, on_id)
        return up.call(method, params, on_id=on_id)

    def level(self, session: str, rank: int) -> int:
        """The log level to ask the upstreams for when ``session`` asks for ``rank``: a shared
        upstream logs at the lowest level any session asked for; each session's own level is
        applied by the session."""
        self.levels[session] = rank
        return min(self.levels.values())

    def level_released(self, session: str) -> int | None:
        """When ``session`` held the lowest level, the level the upstreams go back to (the lowest
        the remaining sessions asked for); None to leave them as they are (with no session left,
        they keep theirs)."""
        before = min(self.levels.values(), default=None)
        self.levels.pop(session, None)
        now = min(self.levels.values(), default=None)
        return now if now is not None and now != before else None

    async def _give_back(self, subscriptions: list[tuple[str, str]], level: int | None,
                         send_level: Callable[[int], Awaitable[None]]) -> None:
        for name, uri in subscriptions:
            await self.subscriptions.unsubscribe(self.upstreams.get(name), uri)
        if level is not None:
            await send_level(level)

    async def roots_changed(self, params: Message) -> None:
        """The host's roots changed: upstreams that pass them on hear it (never in ``serve``: the
        upstreams are shared, and one caller's roots are nobody else's business)."""
        if self.shared:
            return
        for up in self.upstreams.values():
            if up.config.roots == "pass" and up.status == Status.READY:
                await up.notify("notifications/roots/list_changed", params or None)

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ start-up and shutdown

    async def start(self) -> None:
        """Start the upstreams (once; every session shares the start).  Once it has succeeded
        ``up`` is True, and a request need not call this at all."""
        started = self._started
        if started is None:
            started = self._started = asyncio.get_running_loop().create_task(self._start_upstreams())
        elif started.done() and not started.cancelled():  # every request after the first: no shield to build
            started.result()
            self.up = True
            return
        await asyncio.shield(started)
        self.up = True

    async def _start_upstreams(self) -> None:
        await asyncio.gather(*(up.start(self.profile.upstream_capabilities(up)) for up in self.upstreams.values()))
        self.rebuild_catalogue()
        for up in self.upstreams.values():
            if up.status == Status.STARTING and not up.last_error:
                log.warning("upstream %s is still starting after %gs (startup_timeout); its tools join when it is ready", up.name, up.config.startup_timeout)
            elif up.status != Status.READY:
                log.error("%s", up.last_error or f"upstream {up.name} did not start")

    def rebuild_catalogue(self) -> None:
        self.catalogue.rebuild(self.upstreams.values())
        self.ctx.policies.warm(self.tool_names())  # per-tool rule lists built here, not on the first call

    def tool_names(self) -> list[str]:
        """Every catalogued tool as ``UPSTREAM/TOOL`` (for warming a freshly loaded policy set)."""
        return [e.qualified for e in self.catalogue.entries]

    async def close(self) -> None:
        await asyncio.gather(*(up.close() for up in self.upstreams.values()), return_exceptions=True)

    # ------------------------------------------------------------------ UpstreamHandler

    async def upstream_request(self, upstream: Upstream, message: Message) -> None:
        method = message.get("method")
        rid = message["id"]
        roots = configured_roots(upstream) if method == "roots/list" else None
        if roots is not None:
            await upstream.respond(result(rid, roots))
            return
        if not self.shared:
            for session in list(self.sessions.values()):
                await session.relay_request(upstream, message)
                return
            await upstream.refuse(rid, f"mcp-guard cannot relay {method}: no host is connected")
            return
        caller = self._only_caller(upstream)
        if caller is None:
            await upstream.refuse(rid, f"mcp-guard cannot tell which caller {method} is for")
            return
        await caller.on_behalf(upstream, caller.relay_request(upstream, message))

    async def upstream_notification(self, upstream: Upstream, message: Message) -> None:
        method = message.get("method")
        if method == "notifications/tools/list_changed":
            # refreshing needs the upstream's read loop, which is the caller: never wait on it here
            self.later(self._refresh_tools(upstream))
            return
        if method in ("notifications/prompts/list_changed", "notifications/resources/list_changed"):
            self.owners.changed(str(method))
        if not self.shared:
            await self._each(lambda session: session.deliver(upstream, message))
            return
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/progress":
            found = self.callers.progress(params)
            caller = self.sessions.get(str(found[0])) if found is not None else None
            if found is not None and caller is not None:
                await caller.deliver(upstream, notification("notifications/progress", found[1]))
        elif method == "notifications/message":
            caller = self._only_caller(upstream)
            if caller is not None:
                await caller.on_behalf(upstream, caller.deliver(upstream, message))
        elif method in ("notifications/prompts/list_changed", "notifications/resources/list_changed"):
            await self._each(lambda session: session.list_changed(str(method)))
        elif method == "notifications/resources/updated":
            uri = params.get("uri")
            await self._each(lambda session: session.deliver(upstream, message)
                             if isinstance(uri, str) and session.subscribed_to(upstream.name, uri) else None)
        else:
            log.debug("upstream %s: %s not delivered in serve mode", upstream.name, method)

    async def upstream_changed(self, upstream: Upstream) -> None:
        self.owners.changed("notifications/prompts/list_changed")  # (re)connected: its lists may differ
        self.owners.changed("notifications/resources/list_changed")
        if self._started is None or not self._started.done():
            return  # the first build happens once every upstream has had its first try
        await self._tools_changed()

    def _only_caller(self, upstream: Upstream) -> Sink | None:
        caller = self.callers.only_caller(upstream)
        return self.sessions.get(caller) if isinstance(caller, str) else None

    async def _each(self, work: Callable[[Sink], Awaitable[None] | None]) -> None:
        """Tell every session something; in ``serve`` one that fails is logged, the others still hear it."""
        for session in list(self.sessions.values()):
            try:
                pending = work(session)
                if pending is not None:
                    await pending
            except Exception:  # fan-out edge: one failing caller must not keep the others from hearing
                if not self.shared:
                    raise  # run: the one session's failure is the caller's to handle, as before
                log.exception("telling a caller session about a change failed")

    async def _refresh_tools(self, upstream: Upstream) -> None:
        try:
            await upstream.refresh_tools()
        except (RpcError, UpstreamError) as exc:
            log.warning("refreshing the tools of %s failed: %s", upstream.name, exc)
            return
        await self.upstream_changed(upstream)

    async def _tools_changed(self) -> None:
        sessions = list(self.sessions.values())
        before = {s.id: [e.definition for e in s.visible_tools()] for s in sessions}

        async def tell(session: Sink) -> None:
            if session.id in before and [e.definition for e in session.visible_tools()] != before[session.id]:
                await session.list_changed("notifications/tools/list_changed")

        self.rebuild_catalogue()
        await self._each(tell)

    async def policies_changed(self, previous: PolicySet | None = None) -> None:
        """After a reload: each session is told which of its lists changed (``previous`` is the
        policy set the reload replaced); what the upstreams list is asked once, not per session."""
        shared: Listings = {}
        await self._each(lambda session: session.policies_changed(previous, shared))


__all__ = ["Hub", "Listings", "Sink", "UpstreamSubscriptions"]
