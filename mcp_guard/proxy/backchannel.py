"""What reaches a host besides the answers to its requests: what the upstreams send it (their
notifications, filtered for this host, and their questions) and the guard's own questions to it
(``request_host``: sampling, elicitation, roots, approvals).  A handshake-era host is also asked
what a 2026-07-28 upstream's ``input_required`` answer asks for (``forward``), mediated exactly as
that upstream's own question would be.

The flow step of this path: whatever an upstream named by an ``upstreams:`` labels entry sends
the host brings that entry's labels and its content into the session first; when that cannot be
recorded, the message is dropped (a question is refused), never delivered unlabelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcp_guard.decision import Kind
from mcp_guard.errors import StateError
from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    META_LOG_LEVEL,
    METHOD_NOT_FOUND,
    Era,
    Message,
    error,
    notification,
    request,
    result,
)
from mcp_guard.policy import Brought
from mcp_guard.proxy.flow import scope_of, what_it_brought
from mcp_guard.proxy.hub import Hub
from mcp_guard.proxy.listen import Host, Listens
from mcp_guard.proxy.relay import KIND as RELAYED_KIND
from mcp_guard.proxy.relay import Relay, asks_input, settle
from mcp_guard.proxy.roundtrip import configured_roots
from mcp_guard.proxy.routing import LOG_LEVELS, Router
from mcp_guard.upstreams.connection import Upstream

log = logging.getLogger("mcp_guard.session")
_MODERN = Era.MODERN  # read per call: a global (``Era.MODERN`` is an enum metaclass hook on 3.11)


class BackChannel:
    """One session's back channel to its host."""

    def __init__(self, host: Host, hub: Hub, router: Router, relay: Relay, listens: Listens,
                 where: Callable[[Any], tuple[Upstream, int] | None]) -> None:
        self.host = host
        self.hub = hub
        self.router = router
        self.relay = relay
        self.listens = listens
        self._where = where  # the session's: host request id -> where it went (while it is served)
        self.log_levels: dict[Any, int] = {}  # 2026-07-28: host request id -> the log level it opted in to
        self._ids = 0
        self._pending: dict[int, asyncio.Future[Message]] = {}  # the guard's own requests to the host
        self.initialized = asyncio.Event()  # legacy hosts take requests only after `initialized`

    # ------------------------------------------------------------------ log levels

    def note_log_level(self, message: Message) -> None:
        """2026-07-28: a request opts in to log messages with ``_meta`` logLevel (a known level)."""
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        level = meta.get(META_LOG_LEVEL) if isinstance(meta, dict) else None
        if isinstance(level, str) and level in LOG_LEVELS:
            self.log_levels[message["id"]] = LOG_LEVELS.index(level)

    def _wants_log(self, upstream: Upstream, params: Message) -> bool:
        """A 2026-07-28 log message goes out while a request that opted in at or below its level is
        being served by ``upstream`` (it flows before that request's response)."""
        level = params.get("level")
        if not isinstance(level, str) or level not in LOG_LEVELS:
            return False
        rank = LOG_LEVELS.index(level)
        for rid, wanted in self.log_levels.items():
            where = self._where(rid)
            if where is not None and where[0] is upstream and rank >= wanted:
                return True
        return False

    def _at_level(self, params: Message) -> bool:
        wanted = self.router.log_level
        level = params.get("level")
        return wanted is None or (isinstance(level, str) and level in LOG_LEVELS and LOG_LEVELS.index(level) >= wanted)

    # ------------------------------------------------------------------ from the upstreams

    async def deliver(self, upstream: Upstream, message: Message) -> None:
        """An upstream notification for this host, if it is one this host should hear, once what it
        brings is recorded."""
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        host = self.host
        if method == "notifications/cancelled":
            # the upstream cancels a request it sent us; our host-facing ids are our own
            rid = params.get("requestId")
            pending = self._pending.get(rid) if isinstance(rid, int) and not isinstance(rid, bool) else None
            if pending is not None:
                pending.cancel()
            return
        if method in ("notifications/prompts/list_changed", "notifications/resources/list_changed"):
            if host.era == Era.MODERN:
                await self.listens.list_changed(str(method))
                return
        elif method == "notifications/resources/updated":
            uri = params.get("uri")  # only about a resource this host may see now (a reload may have hidden it)
            if not isinstance(uri, str) or not self.router.shows(host.principal, host.chain, Kind.RESOURCE, f"{upstream.name}/{uri}"):
                return
            if host.era == Era.MODERN:
                if self.listens.hears(upstream.name, uri) and await self.brings(upstream, message):
                    await self.listens.resource_updated(upstream, params)
                return
        if host.era == Era.MODERN and method == "notifications/message" and not self._wants_log(upstream, params):
            return  # 2026-07-28: log notifications only for requests that opted in
        if method == "notifications/message" and not self._at_level(params):
            return  # below the level this host asked for (a shared upstream may log more)
        if host.era == Era.MODERN and method == "notifications/progress":
            rebound = self.relay.progress(upstream, params)
            if rebound is None:
                return
            if rebound is not params:
                message = notification(str(method), rebound)
        if not await self.brings(upstream, message):
            return
        await host.send(message)

    async def relay_request(self, upstream: Upstream, message: Message) -> None:
        """An upstream's question (sampling, elicitation, roots) for this host: a handshake-era host
        is asked directly, a 2026-07-28 host inside the tool call it belongs to (``proxy/relay.py``)."""
        method = message.get("method")
        rid = message["id"]
        if self.host.era == Era.MODERN:
            if not await self.brings(upstream, message):
                await upstream.refuse(rid, f"mcp-guard cannot relay {method}: what it brings cannot be recorded")
            elif not await self.relay.offer(upstream, message):
                await upstream.refuse(rid, f"mcp-guard cannot relay {method} to this host outside a tool call")
            return
        capability = RELAYED_KIND.get(str(method))
        if capability is None or capability not in self.host.client_capabilities:
            await upstream.refuse(rid, f"mcp-guard cannot relay {method} to this host")
            return
        if not await self.brings(upstream, message):
            await upstream.refuse(rid, f"mcp-guard cannot relay {method}: what it brings cannot be recorded")
            return
        response = await self.request_host(str(method), message.get("params"))
        response["id"] = rid
        await upstream.respond(response)

    async def brings(self, upstream: Upstream, message: Message) -> bool:
        """An ``upstreams:`` labels entry: what the upstream sends the host brings its labels first;
        False (the message is dropped) when that cannot be recorded."""
        labels = self.hub.ctx.policies.labels.upstream(upstream.name)
        if not labels:
            return True
        host = self.host
        scope = scope_of(host.key, host.era, host.chain, host.principal)
        try:
            await self.hub.pipeline.flows.add(scope, *what_it_brought(Brought(((labels, None),)), message.get("params"),
                                                                      f"upstream {upstream.name}", None, frozenset()))
        except StateError as exc:
            log.error("dropped %s from %s: its labels cannot be recorded (%s)", message.get("method"), upstream.name, exc)
            return False
        return True

    # ------------------------------------------------------------------ a 2026-07-28 upstream's input requests

    async def forward(self, up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Message:
        """A request forwarded for this session (through the hub, which records who sent it); a
        handshake-era host is asked what a 2026-07-28 upstream's ``input_required`` answer asks
        for, and the request retried with the answers (``relay.settle``)."""
        hub, session = self.hub, self.host.id
        response = await hub.call(session, up, method, params, on_id)
        if self.host.era == _MODERN or not asks_input(response):
            return response  # the common case: no closure and no ``settle`` frame per request

        def call(sent: Message) -> Awaitable[Message]:
            return hub.call(session, up, method, sent, on_id)

        return await settle(call, params, lambda asked, question: self._input_for(up, asked, question), response)

    async def _input_for(self, up: Upstream, method: str, params: Message) -> Message:
        """One input request of an upstream's ``input_required`` answer, put to the host as that
        upstream's own request would be (configured roots, the declared capability, flow labels)."""
        roots = configured_roots(up) if method == "roots/list" else None
        if roots is not None:
            return result(None, roots)
        capability = RELAYED_KIND.get(method)
        if capability is None or capability not in self.host.client_capabilities:
            return error(None, METHOD_NOT_FOUND, f"mcp-guard cannot relay {method} to this host")
        if not await self.brings(up, {"method": method, "params": params}):
            return error(None, INTERNAL_ERROR, f"mcp-guard cannot relay {method}: what it brings cannot be recorded")
        return await self.request_host(method, params)

    # ------------------------------------------------------------------ the guard's own questions

    async def request_host(self, method: str, params: Message | None, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """Send a request to the host and wait for its whole answer message."""
        self._ids += 1
        hid = self._ids
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[hid] = fut
        try:
            if self.host.era == Era.LEGACY and not self.initialized.is_set():
                await asyncio.wait_for(self.initialized.wait(), timeout)
            await self.host.send(request(hid, method, params))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            await self.host.send(notification("notifications/cancelled", {"requestId": hid, "reason": "timed out"}))
            return error(hid, INTERNAL_ERROR, f"the host did not answer {method} in time")
        finally:
            self._pending.pop(hid, None)

    def answered(self, message: Message) -> None:
        """The host's answer to one of the guard's requests (an unknown id is dropped)."""
        pending = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if pending is not None and not pending.done():
            pending.set_result(message)


__all__ = ["BackChannel"]
