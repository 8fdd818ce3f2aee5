"""Budgets, rate limits, revocations and the approval queue, behind one async interface.

``open_store(url)`` picks the backend from the URL scheme:

- ``sqlite:////abs/path.db`` (the embedded default): shared by every guard process and the CLI on
  one machine; atomic across processes.
- ``redis://host:port/db``: shared by guard replicas on several machines.
- ``memory://``: one process; nothing survives it.

Every operation raises ``StateError`` (one sentence) when the store is unreachable or corrupt; the
proxy then refuses the call.  Details and semantics: docs/state.md.
"""

from __future__ import annotations

from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    ABANDONED,
    APPROVED,
    EXPIRED,
    PENDING,
    RATE_WINDOW,
    REJECTED,
    Counter,
    StateStore,
)

__all__ = [
    "ABANDONED",
    "APPROVED",
    "EXPIRED",
    "PENDING",
    "RATE_WINDOW",
    "REJECTED",
    "Counter",
    "StateStore",
    "open_store",
]


def open_store(url: str, *, holder: bool = False) -> StateStore:
    """The store for ``url``; opening a sqlite store creates its directory and file (mode 0600).

    ``holder=True`` is for a running guard: a sqlite store then records the process beside the
    database, so the CLI refuses to create a fresh database in place of one the guard still uses."""
    if url.startswith("memory://"):
        from mcp_guard.state.memory import MemoryStore

        return MemoryStore(url)
    if url.startswith("sqlite://"):
        from mcp_guard.state.sqlite import SqliteStore

        return SqliteStore(url, holder=holder)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from mcp_guard.state.redis import RedisStore

        return RedisStore(url)
    raise StateError(f"unsupported state store URL {url!r} (use sqlite://, redis:// or memory://)")
