"""Assemble a running guard from a ``GuardConfig``: policies, grant chain, state store, audit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mcp_guard import telemetry
from mcp_guard.config import GuardConfig, policy_sources, read_token, telemetry_settings
from mcp_guard.decision import Kind
from mcp_guard.errors import AuditError, ConfigError, GuardError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import RELATED_REQUEST, Era, HostTransport, Message, notification, result
from mcp_guard.policy import Parsed, PolicySet, compile_parsed, parse_sources
from mcp_guard.proxy.callers import Callers
from mcp_guard.proxy.pipeline import RequestContext
from mcp_guard.proxy.session import GuardContext, GuardSession

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from opentelemetry.sdk.metrics.export import MetricReader

    from mcp_guard.grants import ChainVerifier, GrantChain
    from mcp_guard.upstreams.connection import Upstream

log = logging.getLogger("mcp_guard")

DRAIN_SECONDS = 10.0


def load_policy_set(config: GuardConfig, parsed: Parsed | None = None) -> PolicySet:
    """Compile the configured policies (``parsed``: already parsed from ``config.policies``, as the
    inline form does to name its upstream); no policies at all means deny everything (and say so)."""
    if not config.policies:
        log.warning("no policies configured: every tool is hidden and every call is refused (default deny)")
        return PolicySet.empty()
    if parsed is None:
        parsed = parse_sources(policy_sources(config.policies))
    policies = compile_parsed(parsed.against(list(config.upstreams)) if config.upstreams else parsed)
    unknown: dict[str, int] = {}
    for w in policies.warnings:
        m = _NO_UPSTREAM.search(w)
        if m:
            unknown[m.group(1)] = unknown.get(m.group(1), 0) + 1
        else:
            log.warning("%s", w)
    if unknown:
        log.warning("%s", unknown_upstreams_hint(unknown, list(config.upstreams)))
    return policies


_NO_UPSTREAM = re.compile(r"warning: no upstream named `([^`]+)` is configured")


def unknown_upstreams_hint(unknown: dict[str, int], configured: list[str]) -> str:
    """One line instead of a warning per tool pattern: which upstream names the policies use that
    no configured upstream has, and how to give an inline server one of them."""
    names = ", ".join(f"{n} ({c} pattern{'s' if c != 1 else ''})" for n, c in sorted(unknown.items()))
    have = ", ".join(configured) or "none"
    return (f"the policies name upstreams that are not configured, so their rules never match: {names}; "
            f"configured: {have} (name an inline server with --name NAME; `mcp-guard check --config` lists each pattern)")


def issuer_keys(config: GuardConfig) -> dict[str, Ed25519PublicKey]:
    """The public keys ``trust.issuers`` names, by issuer."""
    from mcp_guard.grants import load_public_key

    return {name: load_public_key(path) for name, path in config.trust.issuers.items()}


def chain_verifier(config: GuardConfig, serving: bool = False) -> ChainVerifier:
    """The verifier of this guard's trust: ``trust.issuers`` for roots, ``trust.audience``; when
    ``serving``, also ``serve.url`` (the audience of the roots ``POST /token`` issues)."""
    from mcp_guard.grants import ChainVerifier

    also = (config.serve.url,) if serving and config.serve.url else ()
    return ChainVerifier(issuer_keys(config), config.trust.audience, also=also)


def load_chain(config: GuardConfig) -> object | None:
    """Verify the configured grant chain once at start-up; an invalid chain refuses to start."""
    if not config.identity.grant:
        return None
    from mcp_guard.grants import GrantError

    token = read_token(config.identity.grant)
    try:
        return chain_verifier(config).verify(token, time.time())
    except GrantError as exc:
        raise GrantError(exc.code, f"the grant chain (identity.grant / MCP_GUARD_GRANT) is invalid ({exc.code}): {exc}", exc.link_index) from None


async def build_context(config: GuardConfig, parsed: Parsed | None = None, *,
                        scrape_reader: MetricReader | None = None) -> GuardContext:
    """``scrape_reader``: the Prometheus reader of ``serve.admin`` (metrics on even without OTLP)."""
    from mcp_guard.state import open_store

    policies = load_policy_set(config, parsed)
    chain = load_chain(config)
    # off unless OTEL_*, the telemetry: block or a scrape listener ask for it
    hooks = telemetry.start(telemetry_settings(config.telemetry), scrape_reader=scrape_reader)
    audit = None
    if config.audit.path:
        from mcp_guard.audit import AuditLog

        audit = AuditLog(config.audit.path, fsync=config.audit.fsync, max_bytes=config.audit.max_bytes)
    store = open_store(config.state_url, holder=True)
    pins = None
    if config.pinning != "off" and config.lock_file is not None:
        from mcp_guard.pinning import read_lock

        pins = read_lock(config.lock_file)
        if pins is None:
            log.warning("pinning: %s but %s does not exist: run `mcp-guard pin --config ...` to record the tools", config.pinning, config.lock_file)
    ctx = GuardContext(config=config, policies=policies, store=store, audit=audit, chain=chain, pins=pins,  # type: ignore[arg-type]
                       telemetry=hooks)
    with contextlib.suppress(ImportError):
        from mcp_guard.proxy.approvals import make_approver

        ctx.approver = make_approver(ctx)
    return ctx


class _NullHost:
    """The serve hub's host: what no caller caused has no caller to go to."""

    async def send(self, message: Message) -> None:
        log.debug("not delivered in serve mode: %s", message.get("method"))


# what the serve hub tells its upstreams it can do: each question is put to the caller that caused it
# (refused when that caller cannot answer it, or when no single caller did)
RELAYED_TO_CALLERS: Message = {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}


class _Hub(GuardSession):
    """``serve``: owns the upstream connections and hands what they send to the caller session it
    belongs to (``proxy/callers.py``): progress by token, log messages and questions to the one
    caller with requests in flight there, list changes to every caller that may see the change."""

    def __init__(self, ctx: GuardContext) -> None:
        super().__init__(ctx, _NullHost())
        self.era = Era.MODERN  # the hub itself never talks to a host
        self.profile.client_capabilities = dict(RELAYED_TO_CALLERS)
        self.callers = Callers()
        self.children: dict[str, _CallerSession] = {}  # session id -> caller session
        self.levels: dict[str, int] = {}  # session id -> the log level it asked for

    async def upstream_request(self, upstream: Upstream, message: Message) -> None:
        roots = upstream.config.roots
        if message.get("method") == "roots/list" and (isinstance(roots, tuple) or roots == "none"):
            await super().upstream_request(upstream, message)  # answered from the config
            return
        caller = self.callers.only_caller(upstream)
        if not isinstance(caller, _CallerSession):
            await upstream.refuse(message["id"], f"mcp-guard cannot tell which caller {message.get('method')} is for")
            return
        await caller.on_behalf(upstream, caller.upstream_request(upstream, message))

    async def upstream_notification(self, upstream: Upstream, message: Message) -> None:
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/progress":
            found = self.callers.progress(params)
            if found is not None and isinstance(found[0], _CallerSession):
                await found[0].upstream_notification(upstream, notification("notifications/progress", found[1]))
        elif method == "notifications/message":
            caller = self.callers.only_caller(upstream)
            if isinstance(caller, _CallerSession):
                await caller.on_behalf(upstream, caller.upstream_notification(upstream, message))
        elif method in ("notifications/prompts/list_changed", "notifications/resources/list_changed"):
            self.owners.changed(str(method))
            await self._each(lambda child: child.list_changed(str(method)))
        elif method == "notifications/resources/updated":
            uri = params.get("uri")
            await self._each(lambda child: child.upstream_notification(upstream, message)
                             if uri in child.subscribed.get(upstream.name, ()) else None)
        elif method == "notifications/tools/list_changed":
            await super().upstream_notification(upstream, message)  # refresh, then _tools_changed
        else:
            log.debug("upstream %s: %s not delivered in serve mode", upstream.name, method)

    async def _each(self, work: Callable[[_CallerSession], Awaitable[None] | None]) -> None:
        """Tell every caller session something; one that fails is logged, the others still hear it."""
        for child in list(self.children.values()):
            try:
                pending = work(child)
                if pending is not None:
                    await pending
            except Exception:
                log.exception("telling a caller session about a change failed")

    async def _tools_changed(self) -> None:
        children = list(self.children.values())
        before = {c.id: [e.definition for e in c.visible_tools()] for c in children}

        async def tell(child: _CallerSession) -> None:
            if child.id in before and [e.definition for e in child.visible_tools()] != before[child.id]:
                await child.list_changed("notifications/tools/list_changed")

        self._rebuild_catalogue()
        await self._each(tell)

    async def policies_changed(self, previous: PolicySet | None = None,
                               listings: dict[Kind, list[tuple[str, bool]]] | None = None) -> None:
        shared: dict[Kind, list[tuple[str, bool]]] = {} if listings is None else listings  # one listing per reload
        await self._each(lambda child: child.policies_changed(previous, shared))

    def upstream_level(self, session: str, rank: int) -> int:
        """A shared upstream logs at the lowest level any caller asked for; each caller's own
        level is applied by its session."""
        self.levels[session] = rank
        return min(self.levels.values())

    def level_released(self, session: str) -> int | None:
        """A caller's session ended: when it held the lowest level, the level the shared upstreams
        go back to (the lowest the remaining callers asked for); None to leave them as they are
        (with no caller left, they keep theirs)."""
        before = min(self.levels.values(), default=None)
        self.levels.pop(session, None)
        now = min(self.levels.values(), default=None)
        return now if now is not None and now != before else None

    async def give_back(self, subscriptions: list[tuple[str, str]], level: int | None) -> None:
        """Tell the upstreams what a closed caller session no longer needs (in the background:
        closing, expiring or evicting a session never waits on an upstream)."""
        for name, uri in subscriptions:
            await self.subscriptions.unsubscribe(self.upstreams.get(name), uri)
        if level is not None:
            await self.router.send_level(level)


class _CallerSession(GuardSession):
    """A ``serve`` caller's session: its principal is the verified bearer token's (a grant chain or
    an OAuth access token), never the config identity or the client's own name."""

    def __init__(self, ctx: GuardContext, host: HostTransport, hub: _Hub, chain: GrantChain | None,
                 principal: Principal, limit_scope: str) -> None:
        super().__init__(ctx, host, hub=hub, chain=chain)
        self._hub = hub
        self._caller = principal
        self.limit_scope = limit_scope
        self.subscribed: dict[str, set[str]] = {}  # upstream -> resource URIs this caller subscribed to
        self._handlers["resources/subscribe"] = self._subscription
        self._handlers["resources/unsubscribe"] = self._subscription
        hub.children[self.id] = self

    @property
    def principal(self) -> Principal:
        return self._caller

    async def _upstream_call(self, up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Message:
        return await self._hub.callers.forward(self, up, method, params, on_id)

    def _upstream_level(self, rank: int) -> int:
        return self._hub.upstream_level(self.id, rank)

    async def on_behalf(self, upstream: Upstream, work: Awaitable[None]) -> None:
        """Run what ``upstream`` sent with this caller's request on it as the related request, so a
        transport with a stream per request sends the outcome there."""
        token = RELATED_REQUEST.set(self.request_on(upstream))
        try:
            await work
        finally:
            RELATED_REQUEST.reset(token)

    async def _host_notification(self, message: Message) -> None:
        if message.get("method") == "notifications/roots/list_changed":
            return  # the upstreams are shared: one caller's roots changing is nobody else's business
        await super()._host_notification(message)

    async def list_changed(self, method: str) -> None:
        await self._list_changed(method)

    async def _subscription(self, req: RequestContext) -> Message:
        """A caller's subscription is counted with every other holder of the same upstream one
        (``UpstreamSubscriptions``): the upstream is asked to drop it only when the last goes.
        An unsubscribe is resolved and decided first (hidden = unknown, audited), so whether some
        other caller holds the URI never shows in the answer."""
        uri = req.params.get("uri")
        if req.method == "resources/unsubscribe" and isinstance(uri, str):
            return await self._release(req, uri)
        response = await self.router.resource_request(req)
        where = self._upstream_ids.get(req.message["id"])  # the upstream it went to (while it is served)
        if req.method == "resources/subscribe" and "result" in response and isinstance(uri, str) and where is not None:
            uris = self.subscribed.setdefault(where[0].name, set())
            if uri not in uris:
                uris.add(uri)
                self.subscriptions.hold((where[0].name, uri))
        return response

    async def _release(self, req: RequestContext, uri: str) -> Message:
        mine = next((up for up, uris in self.subscribed.items() if uri in uris), None)
        last = mine is not None and self.subscriptions.release((mine, uri))  # given back below if refused
        if mine is not None:
            self.subscribed[mine].discard(uri)
        ok = False
        try:
            if last:  # this caller was its last holder: the unsubscribe goes upstream
                response = await self.router.resource_request(req)
            else:  # another caller's or still shared: never dropped upstream on this caller's behalf
                response = await self.router.resource_request(req, answer=lambda: result(req.message["id"], {}))
            ok = "result" in response
        finally:
            if mine is not None and not ok:  # refused or failed: still held
                self.subscribed[mine].add(uri)
                self.subscriptions.hold((mine, uri))
        return response

    async def close(self) -> None:
        """Closed, expired or evicted: what only this caller held upstream (resource subscriptions,
        a lower log level) is given back."""
        self._hub.children.pop(self.id, None)
        held = [(up, uri) for up, uris in self.subscribed.items() for uri in uris]
        self.subscribed.clear()
        last = [key for key in held if self.subscriptions.release(key)]  # counted now, told upstream later
        level = self._hub.level_released(self.id)
        if last or level is not None:
            self._hub.later(self._hub.give_back(last, level))
        await super().close()


class ServeSessions:
    """``serve``: one hub session owns the upstreams; each caller gets a session of its own (its
    own verified principal) sharing them.  The transport sees only this (``transports.http.Sessions``)."""

    def __init__(self, ctx: GuardContext) -> None:
        self.ctx = ctx
        ctx.approval_queue_only = True  # the bearer caller holds every other channel: it must not approve itself
        self.hub = _Hub(ctx)

    async def start(self) -> None:
        await self.hub.start()

    async def close(self) -> None:
        await self.hub.close()

    def new(self, host: HostTransport, chain: GrantChain | None, principal: Principal, limit_scope: str) -> GuardSession:
        """``limit_scope`` is what per_minute/per_session limits count by: the principal, so a new
        session (or another replica) does not start them afresh."""
        return _CallerSession(self.ctx, host, self.hub, chain, principal, limit_scope)

    def refused(self, principal: Principal, method: str | None, reason: str, session: str | None = None) -> None:
        """One audit record (decision ``deny``, no target) for a request the transport refused
        before any session handled it: a session another principal opened, a session cap."""
        audit = self.ctx.audit
        if audit is None:
            return
        try:
            audit.append({"principal": list(principal.chain), "user": principal.user, "agent": principal.agent,
                          "verified": principal.verified, "purpose": principal.purpose, "grant_id": principal.grant_id,
                          "session": session, "method": method, "kind": None, "upstream": None, "decision": "deny",
                          "policy_ids": [], "rule_ids": [], "reason": reason, "approver": None})
        except AuditError as exc:  # refused anyway: the failure is logged
            log.error("audit write failed: %s", exc)

    async def policies_changed(self, previous: PolicySet | None = None) -> None:
        """After a reload: each caller is told which of its lists changed (``previous`` is the
        policy set the reload replaced)."""
        await self.hub.policies_changed(previous)

    def tool_names(self) -> list[str]:
        return self.hub.tool_names()


async def run_stdio(config: GuardConfig, parsed: Parsed | None = None) -> None:
    """The ``mcp-guard run`` main loop: serve the host on stdio until it closes stdin."""
    from mcp_guard.transports.stdio import StdioHost

    ctx = await build_context(config, parsed)
    ctx.flow_exclusive = True  # one host session, one process: nobody else writes its flow state
    host = StdioHost()
    await host.open()
    session = GuardSession(ctx, host)
    loop = asyncio.get_running_loop()
    serving = loop.create_task(host.serve(session.handle))

    def stop() -> None:
        serving.cancel()

    session.on_fatal = stop
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, serving.cancel)
    from mcp_guard.proxy.reload import watch_policies

    reload_now = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    watcher = loop.create_task(watch_policies(ctx, session.policies_changed, reload_now, session.tool_names))
    try:
        await serving
        if not host.gone:  # EOF on stdin: answer what was already asked, if the host still listens
            await session.drain(DRAIN_SECONDS)
    except asyncio.CancelledError:
        pass
    finally:
        watcher.cancel()
        await session.close()
        with contextlib.suppress(Exception):
            await ctx.store.close()
        ctx.telemetry.shutdown()  # flush queued spans, bounded by the export timeout
        await host.close()
    if session.fatal is not None:
        raise ConfigError(session.fatal)


__all__ = ["GuardError", "ServeSessions", "build_context", "load_policy_set", "run_stdio"]
