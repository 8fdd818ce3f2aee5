"""Approvals remembered for a session (``approvals.remember: session``), kept in the state store so
every ``serve`` replica sharing the store honours them.

One record per session, stored like a ``serve`` session record (``value_set`` under the session's
name, expiring ``ttl`` after its last use): a map from a call's memo (who asked, for which target,
with which arguments) to who approved it.  The record is refreshed while it is used, at most once a
quarter of ``ttl`` and kept ``ttl * 1.25``, so one used within ``ttl`` never vanishes early.  It
holds at most ``MAX_PER_SESSION`` approvals (the oldest goes first).  Names are SHA-256 digests:
nothing in a key can be steered into another session's record.

Two replicas remembering for one session at the same instant may lose one of the two (the last
write wins): that call is asked again, never assumed.  Every method raises ``StateError`` when the
store cannot be used; the caller then asks the person again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import orjson

from mcp_guard.state.base import StateStore

PREFIX = "approval-remembered:"
MAX_PER_SESSION = 256
"""Approvals one session's record keeps; past it the oldest is forgotten (asked again when called)."""


def _digest(*parts: str) -> str:
    h = hashlib.sha256(b"mcp-guard/remembered")
    for part in parts:
        h.update(b"\0" + part.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def record_key(session: str) -> str:
    """The store key of ``session``'s record."""
    return PREFIX + _digest(session)


class RememberedApprovals:
    """Reads and writes the remembered approvals of sessions in one store (``ttl``: seconds;
    ``clock``: epoch seconds, as the store's expiry reads them)."""

    def __init__(self, store: StateStore, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock

    async def _read(self, session: str) -> tuple[dict[str, str], float]:
        """The session's approvals (memo digest -> approver) and when the record was written."""
        raw = await self.store.value_get(record_key(session))
        try:
            record = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("at"), int | float):
            return {}, 0.0
        approvals = record.get("approvals")
        if not isinstance(approvals, dict):
            return {}, 0.0
        return {k: v for k, v in approvals.items() if isinstance(v, str)}, float(record["at"])

    async def _write(self, session: str, approvals: dict[str, str], now: float) -> None:
        body = orjson.dumps({"at": now, "approvals": approvals}).decode()
        await self.store.value_set(record_key(session), body, now + self.ttl * 1.25)

    async def recall(self, session: str, memo: Sequence[str]) -> str | None:
        """Who approved ``memo`` in ``session`` when it was remembered, else None."""
        approvals, at = await self._read(session)
        approver = approvals.get(_digest(*memo))
        now = self.clock()
        if approver is not None and now - at > self.ttl / 4:
            await self._write(session, approvals, now)  # in use: kept alive
        return approver

    async def keep(self, session: str, memo: Sequence[str], approver: str) -> None:
        """Remember that ``approver`` approved ``memo`` in ``session`` (the most recent last)."""
        approvals, _ = await self._read(session)
        key = _digest(*memo)
        approvals.pop(key, None)
        approvals[key] = approver
        while len(approvals) > MAX_PER_SESSION:
            del approvals[next(iter(approvals))]
        await self._write(session, approvals, self.clock())


__all__ = ["MAX_PER_SESSION", "PREFIX", "RememberedApprovals", "record_key"]
