"""Hot reload of policies: a changed file (polled) or SIGHUP builds a new ``PolicySet`` beside the
live one and swaps the reference; a broken file keeps the last good set and says why in the log."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable

from mcp_guard.config import GuardConfig, iter_policy_files, policy_sources
from mcp_guard.errors import ConfigError
from mcp_guard.policy import Parsed, PolicySet, compile_parsed, parse_sources
from mcp_guard.proxy.context import GuardContext

log = logging.getLogger("mcp_guard.reload")

POLL_SECONDS = 1.0


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


def policy_fingerprint(config: GuardConfig) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every policy file: cheap to compute once a second."""
    out: list[tuple[str, int, int]] = []
    for root in config.policies:
        for p in iter_policy_files(root) if root.exists() else [root]:
            try:
                st = os.stat(p)
                out.append((str(p), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(p), -1, -1))
    return tuple(out)


def reload_policies(ctx: GuardContext, tools: Iterable[str] = ()) -> list[str]:
    """Try to swap in freshly compiled policies (warmed for ``tools`` before the swap, so no
    call pays for the new set's first lookups); returns the problems that kept the old set."""
    try:
        fresh = load_policy_set(ctx.config)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("policy reload refused, keeping the last good policies: %s", line)
        return list(exc.problems)
    fresh.warm(tools)
    ctx.policies = fresh  # one reference assignment: every later decision sees the new set
    log.info("policies reloaded (%d policies)", len(fresh.policies))
    return []


def resettle_heap() -> None:
    """``serve`` and ``run`` froze their start-up heap (``gc.freeze``), the policy set included, so a
    set a reload replaced would never be collected: thaw, collect it, and freeze what is left again.
    Where nothing froze the heap (a guard in a test's process), the collector finds the old set on
    its own."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


async def watch_policies(
    ctx: GuardContext,
    changed: Callable[[PolicySet], Awaitable[None]],
    wake: asyncio.Event,
    tools: Callable[[], Iterable[str]] = tuple,
) -> None:
    """Poll the policy files (and wake on SIGHUP); after a successful swap call ``changed`` with
    the policy set it replaced."""
    if not ctx.config.policies:
        return
    seen = policy_fingerprint(ctx.config)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), POLL_SECONDS)
        forced = wake.is_set()
        wake.clear()
        now = policy_fingerprint(ctx.config)
        if now == seen and not forced:
            continue
        seen = now
        previous = ctx.policies
        if not reload_policies(ctx, tools()):
            await changed(previous)
            del previous  # the last reference here: the replaced set can now be collected
            resettle_heap()


__all__ = ["policy_fingerprint", "reload_policies", "resettle_heap", "watch_policies"]
