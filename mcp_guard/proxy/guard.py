"""Assemble a running guard from a ``GuardConfig``: policies, grant chain, state store, audit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from typing import TYPE_CHECKING

from mcp_guard import telemetry
from mcp_guard.config import GuardConfig, policy_sources, read_token, telemetry_settings
from mcp_guard.errors import ConfigError, GuardError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era, HostTransport, Message
from mcp_guard.policy import PolicySet, load_sources
from mcp_guard.proxy.session import GuardContext, GuardSession

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from mcp_guard.grants import ChainVerifier, GrantChain

log = logging.getLogger("mcp_guard")

DRAIN_SECONDS = 10.0


def load_policy_set(config: GuardConfig) -> PolicySet:
    """Compile the configured policies; no policies at all means deny everything (and say so)."""
    if not config.policies:
        log.warning("no policies configured: every tool is hidden and every call is refused (default deny)")
        return PolicySet.empty()
    policies = load_sources(policy_sources(config.policies), upstreams=list(config.upstreams) or None)
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


def chain_verifier(config: GuardConfig) -> ChainVerifier:
    """The verifier of this guard's trust: ``trust.issuers`` for roots, ``trust.audience``."""
    from mcp_guard.grants import ChainVerifier

    return ChainVerifier(issuer_keys(config), config.trust.audience)


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


async def build_context(config: GuardConfig) -> GuardContext:
    from mcp_guard.state import open_store

    policies = load_policy_set(config)
    chain = load_chain(config)
    hooks = telemetry.start(telemetry_settings(config.telemetry))  # off unless OTEL_* or the telemetry: block ask for it
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
    """The serve hub's host: upstream notifications have no single client to go to."""

    async def send(self, message: Message) -> None:
        log.debug("not delivered in serve mode: %s", message.get("method"))


class _CallerSession(GuardSession):
    """A ``serve`` caller's session: its principal is the verified bearer token's (a grant chain or
    an OAuth access token), never the config identity or the client's own name."""

    def __init__(self, ctx: GuardContext, host: HostTransport, hub: GuardSession, chain: GrantChain | None,
                 principal: Principal, limit_scope: str) -> None:
        super().__init__(ctx, host, hub=hub, chain=chain)
        self._caller = principal
        self.limit_scope = limit_scope

    @property
    def principal(self) -> Principal:
        return self._caller


class ServeSessions:
    """``serve``: one hub session owns the upstreams; each caller gets a session of its own (its
    own verified principal) sharing them.  The transport sees only this (``transports.http.Sessions``)."""

    def __init__(self, ctx: GuardContext) -> None:
        self.ctx = ctx
        ctx.approval_queue_only = True  # the bearer caller holds every other channel: it must not approve itself
        self.hub = GuardSession(ctx, _NullHost())
        self.hub.era = Era.MODERN  # no stream back to a client: upstreams are offered no sampling/elicitation/roots

    async def start(self) -> None:
        await self.hub.start()

    async def close(self) -> None:
        await self.hub.close()

    def new(self, host: HostTransport, chain: GrantChain | None, principal: Principal, limit_scope: str) -> GuardSession:
        """``limit_scope`` is what per_minute/per_session limits count by: the principal, so a new
        session (or another replica) does not start them afresh."""
        return _CallerSession(self.ctx, host, self.hub, chain, principal, limit_scope)


async def run_stdio(config: GuardConfig) -> None:
    """The ``mcp-guard run`` main loop: serve the host on stdio until it closes stdin."""
    from mcp_guard.transports.stdio import StdioHost

    ctx = await build_context(config)
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
