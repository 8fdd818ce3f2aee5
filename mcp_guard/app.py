"""The start-up root: assembles a guard from its configuration for either face.

``run_stdio``/``run_host`` serve one host (``mcp-guard run``: stdio, or an in-memory pair in
tests); ``run_serve`` serves many callers over Streamable HTTP (``mcp-guard serve``).  Everything
both faces share (policies, the grant chain, the state store, the audit log, telemetry, the
approver) is built once here, by ``build_context``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from mcp_guard import telemetry
from mcp_guard.config import GuardConfig, read_token, telemetry_settings
from mcp_guard.errors import ConfigError
from mcp_guard.jsonrpc import Message
from mcp_guard.policy import Parsed
from mcp_guard.proxy.approvals import make_approver
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.reload import load_policy_set, watch_policies
from mcp_guard.proxy.session import GuardSession

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from opentelemetry.sdk.metrics.export import MetricReader

    from mcp_guard.grants import ChainVerifier

log = logging.getLogger("mcp_guard")

DRAIN_SECONDS = 10.0
GC_THRESHOLD = 10_000  # young-generation allocations between collections (CPython: 700)


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
    ctx.approver = make_approver(ctx)
    return ctx


class ByteHost(Protocol):
    """The host side of ``run``: stdio, or an in-memory pair (``transports/memory.py``)."""

    @property
    def gone(self) -> bool: ...

    async def hung_up(self) -> None: ...

    async def send(self, message: Message) -> None: ...

    async def serve(self, handle: Callable[[Any], Awaitable[None]], accept: Callable[[Any], Awaitable[None] | None] | None = None) -> None: ...

    async def close(self) -> None: ...


async def run_stdio(config: GuardConfig, parsed: Parsed | None = None) -> None:
    """The ``mcp-guard run`` main loop: serve the host on stdio until it closes stdin."""
    from mcp_guard.transports.stdio import StdioHost

    ctx = await build_context(config, parsed)
    ctx.flow_exclusive = True  # one host session, one process: nobody else writes its flow state
    host = StdioHost()
    await host.open()
    settle_heap()  # as serve; and the exit after EOF skips a full collection of the start-up heap
    await run_host(ctx, host)


async def run_host(ctx: GuardContext, host: ByteHost, *, signals: bool = True) -> None:
    """Serve one host until it closes its side: the pump, the policy watcher and, with ``signals``
    (a process of its own), SIGTERM/SIGINT to stop and SIGHUP to reload."""
    session = GuardSession(ctx, host)
    loop = asyncio.get_running_loop()
    serving = loop.create_task(host.serve(session.handle, session.accept))

    def stop() -> None:
        serving.cancel()

    session.on_fatal = stop
    reload_now = asyncio.Event()
    if signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, serving.cancel)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    watcher = loop.create_task(watch_policies(ctx, session.policies_changed, reload_now, session.tool_names))
    try:
        await serving
        if not host.gone:  # EOF on stdin: answer what was already asked, if the host still listens
            await session.drain(DRAIN_SECONDS, host.hung_up())
    except asyncio.CancelledError:
        pass
    finally:
        watcher.cancel()
        await session.close()
        with contextlib.suppress(Exception):  # process edge: a store that fails to close must not hide the exit
            await ctx.store.close()
        ctx.telemetry.shutdown()  # flush queued spans, bounded by the export timeout
        await host.close()
    if session.fatal is not None:
        raise ConfigError(session.fatal)


def settle_heap() -> None:
    """Move what start-up built (modules, the policy index, the catalogue) out of the collector's
    sight: a full collection under load would otherwise walk all of it again and again, and a
    request's allocations need fewer, cheaper young-generation passes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


async def run_serve(config: GuardConfig, host: str, port: int, allow_origin: tuple[str, ...], reuse_port: bool) -> None:
    """The ``mcp-guard serve`` main loop (one worker): the hub, the HTTP front, the policy watcher.
    (Its imports wait until here: ``run`` starts without loading the HTTP stack.)"""
    from mcp_guard.proxy import era_rules
    from mcp_guard.proxy.guard import ServeSessions
    from mcp_guard.proxy.readiness import missing
    from mcp_guard.serve.admin import Admin, prometheus_reader
    from mcp_guard.serve.approval_page import ApprovalPage, page_base, page_key
    from mcp_guard.serve.asgi import serve_http
    from mcp_guard.serve.drain import Drain
    from mcp_guard.serve.exchange import TokenExchange
    from mcp_guard.serve.fanout import Fanout
    from mcp_guard.serve.oauth import OAuthVerifier
    from mcp_guard.serve.session_records import SessionRecords

    scrape = registry = None
    if config.serve.admin is not None:
        scrape, registry = prometheus_reader()
    ctx = await build_context(config, scrape_reader=scrape)
    verifier = chain_verifier(config, serving=True)
    oauth = OAuthVerifier(config.serve.oauth) if config.serve.oauth else None
    te = config.serve.token_exchange
    exchange = TokenExchange(te, config.serve.url) if te is not None and oauth is not None and config.serve.url else None
    page = None
    if config.serve.approvals is not None:
        ctx.approval_page = page_base(config.serve.url, host, port)
        page = ApprovalPage(config.serve.approvals, ctx.store, page_key(config.approvals.state_key), ctx.approval_page)
    sessions = ServeSessions(ctx)
    loop = asyncio.get_running_loop()
    reload_now = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    # policy files watched as in `run`: every caller is told when the lists it may see change
    watcher = loop.create_task(watch_policies(ctx, sessions.policies_changed, reload_now, sessions.tool_names))
    drain = Drain(config.serve.drain_timeout)
    drain.on_begin.append(watcher.cancel)  # a drain reloads nothing any more
    admin = None
    if config.serve.admin is not None:
        admin = Admin(lambda: missing(ctx, sessions.hub.upstreams, lambda: drain.draining), registry)
    records = None
    if not config.state_url.startswith("memory://"):  # a shared store: any replica may serve any session
        records = SessionRecords(ctx.store, config.serve.session_idle)
    fanout = None
    if config.state_url.startswith(("redis://", "rediss://")):  # replicas on several hosts: events over pub/sub
        fanout = Fanout(config.state_url)
    era_rules.ladder()  # the SDK's import now, not in the first 2026-07-28 request
    settle_heap()
    try:
        await serve_http(sessions, verifier, host, port, allow_origin, config=config.serve,
                         chain_issuers=frozenset(config.trust.issuers), oauth=oauth, exchange=exchange, reuse_port=reuse_port,
                         page=page, admin=admin, drain=drain, records=records, fanout=fanout)
    finally:
        watcher.cancel()
        await ctx.store.close()
        ctx.telemetry.shutdown()


__all__ = ["ByteHost", "build_context", "chain_verifier", "issuer_keys", "load_chain", "run_host", "run_serve",
           "run_stdio", "settle_heap"]
