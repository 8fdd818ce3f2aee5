"""Handshake-era sessions in the shared state store, so any ``serve`` replica can serve them.

A replica that opens a session (``initialize``) records, under the session id, a digest of the
caller binding the session belongs to and the ``initialize`` request itself.  A replica that gets a
request for a session it does not hold - a balancer without stickiness, a replica that died -
looks the record up, refuses another caller (403) exactly as the replica that opened it would,
and otherwise adopts the session: it replays the recorded handshake into a new local guard
session (same era, protocol version, client capabilities and client info) and serves the
request.  Limits, budgets, revocations and approvals were already shared (they count per
principal in the store).  What the caller changed about its session since the handshake moves
with the record too (``state``): the log level it set and the resources it subscribed to; an
adopting replica replays them after the handshake, and a replica already holding the session
replays what changed when told so (asgi.py).  Approvals remembered for the session are records
of the store too, under the session's name on every replica (``state/remembered.py``).

Records expire with ``serve.session_idle`` and are refreshed while used; ``DELETE`` removes one.
With ``state.url: memory://`` nothing is shared and nothing is recorded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import orjson

from mcp_guard.errors import GuardError
from mcp_guard.jsonrpc import Message
from mcp_guard.state import StateStore

log = logging.getLogger("mcp_guard.http")

PREFIX = "http-session:"


def binding_digest(binding: str) -> str:
    """What the record keeps of a binding: enough to compare, nothing to replay (it may hold a token hash)."""
    return hashlib.sha256(b"mcp-guard/session-binding\0" + binding.encode()).hexdigest()


class SessionRecords:
    """The shared records of one ``serve`` process's handshake-era sessions."""

    def __init__(self, store: StateStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._saved: dict[str, float] = {}  # session id -> when this process last refreshed it

    async def save(self, sid: str, binding: str, initialize: Message, state: Message | None = None) -> None:
        """Record (or refresh) session ``sid``; ``state``: what its caller changed since the handshake."""
        record: Message = {"binding": binding_digest(binding), "initialize": initialize}
        if state:
            record["state"] = state
        body = orjson.dumps(record).decode()
        try:
            # refreshed at most every ttl/4: kept that much longer, so a session idle for less than
            # ttl never vanishes early
            await self.store.value_set(PREFIX + sid, body, time.time() + self.ttl * 1.25)
        except GuardError as exc:  # the session still works here; only adoption elsewhere is lost
            log.warning("session %s is not shared with other replicas: %s", sid[:8], exc)
            return
        self._saved[sid] = time.monotonic()

    async def load(self, sid: str) -> dict[str, Any] | None:
        """The record of ``sid`` (``binding`` digest, ``initialize`` message, ``state``), or None."""
        try:
            raw = await self.store.value_get(PREFIX + sid)
        except GuardError as exc:
            log.warning("cannot look up session %s in the state store: %s", sid[:8], exc)
            return None
        if not raw:
            return None
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        ok = isinstance(record, dict) and isinstance(record.get("binding"), str) and isinstance(record.get("initialize"), dict)
        return record if ok and isinstance(record.get("state", {}), dict) else None

    def matches(self, record: dict[str, Any], binding: str) -> bool:
        return bool(record["binding"] == binding_digest(binding))

    async def touch(self, sid: str, binding: str, initialize: Message | None, state: Message | None = None) -> None:
        """Keep a used session's record alive (at most one write per quarter of its lifetime)."""
        last = self._saved.get(sid)
        if initialize is not None and (last is None or time.monotonic() - last > self.ttl / 4):
            await self.save(sid, binding, initialize, state)

    async def forget(self, sid: str) -> None:
        self._saved.pop(sid, None)
        try:
            await self.store.value_set(PREFIX + sid, "", time.time())  # expires at once
        except GuardError as exc:
            log.warning("cannot remove session %s from the state store: %s", sid[:8], exc)


__all__ = ["PREFIX", "SessionRecords", "binding_digest"]
