"""``serve``'s session table: one entry per HTTP session (``SessionEntry``), capped per principal
(its own oldest goes), per delegating root and in all (refused past either), expired when idle,
so one caller can never push out another's."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import JSONResponse, Response

from mcp_guard.config import ServeConfig
from mcp_guard.jsonrpc import INVALID_REQUEST, HostTransport, Message, error
from mcp_guard.serve.reply_host import HostSession, ReplyHost
from mcp_guard.serve.resource import Caller

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain
    from mcp_guard.identity import Principal
    from mcp_guard.serve.session_records import SessionRecords

log = logging.getLogger("mcp_guard.http")


class Sessions(Protocol):
    """What serving needs from the guard: its shared upstreams, and a new session per caller whose
    principal is the verified token's and whose limits count by ``limit_scope`` (the principal)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def new(self, host: HostTransport, chain: GrantChain | None, principal: Principal, limit_scope: str,
            session_key: str = "") -> HostSession: ...

    def refused(self, principal: Principal, method: str | None, reason: str, session: str | None = None) -> None:
        """Audit a request the transport refused before any session handled it."""
        ...


def session_key(key: str) -> str:
    """The name every replica gives the session of table key ``key`` (its Mcp-Session-Id, or the
    2026-07-28 caller's binding): a digest, so neither appears where the name is stored."""
    return hashlib.sha256(b"mcp-guard/session\0" + key.encode()).hexdigest()[:32]


@dataclass
class SessionEntry:
    key: str  # "sid:<Mcp-Session-Id>" or "id:<binding>" (2026-07-28, one per caller)
    session: HostSession
    host: ReplyHost
    binding: str
    owner: str
    root: str
    used: float
    busy: int = 0
    initialize: Message | None = None  # the handshake, kept to refresh the shared record (session_records.py)
    initialized: bool = False  # the session heard `notifications/initialized` (shared records: from this replica)
    state: Message = field(default_factory=dict)  # what the caller changed since the handshake (session_state.py)

    async def close(self, reason: str) -> None:
        self.host.abort(reason)
        await self.session.close()


class SessionTable:
    """The sessions this guard holds, by key, with the counts its caps read."""

    def __init__(self, sessions: Sessions, serve: ServeConfig) -> None:
        self.guard = sessions
        self.serve = serve
        self.entries: dict[str, SessionEntry] = {}  # SessionEntry.key -> session
        self.owned: dict[str, OrderedDict[str, None]] = {}  # principal -> its entry keys, LRU order
        self.rooted: dict[str, int] = {}  # delegating root -> how many sessions its principals hold
        self.by_session_key: dict[str, SessionEntry] = {}  # HostSession.key -> its entry (the approval page's notices)
        self.records: SessionRecords | None = None  # shared session records: any replica serves any session

    def _entry(self, sid: str, caller: Caller, rid: Any = None, method: str | None = None) -> SessionEntry | Response:
        found = self.entries.get(f"sid:{sid}")
        if found is None:
            return JSONResponse(error(rid, INVALID_REQUEST, "Unknown or expired session"), status_code=404)
        if found.binding != caller.binding:
            self._foreign(found, caller, method)
            return JSONResponse(error(rid, INVALID_REQUEST, "This session belongs to another caller"), status_code=403)
        return found

    def _foreign(self, entry: SessionEntry, caller: Caller, method: str | None) -> None:
        """Audit a request on a session another principal opened (another user, agent chain,
        purpose, issuer or grant chain): refused whatever it asks."""
        self.guard.refused(caller.principal, method, "mcp-guard refused the request: its principal is not the one that "
                           "opened this session", entry.session.id)
    async def _open(self, key: str, caller: Caller, message: Message) -> SessionEntry | Response:
        """A new session for ``caller``; past ``max_sessions_per_principal`` its own oldest idle one
        goes; one that would pass ``max_sessions_per_root`` or ``max_sessions`` is refused."""
        refusal = self._over_cap(caller, message)
        if refusal is not None:
            return refusal
        host = ReplyHost()
        # limits count per principal; what is remembered for the session, by its key on every replica
        session = self.guard.new(host, caller.chain, caller.principal, caller.owner_id, session_key(key))
        host.session = session
        entry = SessionEntry(key, session, host, caller.binding, caller.owner, caller.root, time.monotonic())
        self.entries[key] = entry
        self.by_session_key[session.key] = entry
        self.rooted[entry.root] = self.rooted.get(entry.root, 0) + 1
        mine = self.owned.setdefault(caller.owner, OrderedDict())
        mine[key] = None
        while len(mine) > self.serve.max_sessions_per_principal:
            victim = next((k for k in mine if not self.entries[k].busy and k != key), None) or next(iter(mine))
            old = self._drop(victim)
            if old is not None and self.records is not None and victim.startswith("sid:"):
                await self.records.forget(victim[4:])  # evicted everywhere, not only here
            if old is not None:
                log.info("%s has more than %d sessions: its least recently used one is closed", caller.owner,
                         self.serve.max_sessions_per_principal)
                await old.close("Session closed: this caller opened too many sessions")
        return entry

    def _over_cap(self, caller: Caller, message: Message) -> Response | None:
        """The refusal (audited) of a session that would add one past a cap: a principal at its own
        cap only replaces its oldest session, so it adds none."""
        mine = self.owned.get(caller.owner)
        if mine is not None and len(mine) >= self.serve.max_sessions_per_principal:
            return None
        if self.rooted.get(caller.root, 0) >= self.serve.max_sessions_per_root:
            status, reason = 429, (f"this caller's delegating root already holds {self.serve.max_sessions_per_root} sessions "
                                   "(its own and its sub-agents'); end one or wait for one to expire")
        elif len(self.entries) >= self.serve.max_sessions:
            status, reason = 503, f"the guard already holds {self.serve.max_sessions} sessions; try again later"
        else:
            return None
        method = message.get("method")
        log.info("refused a new session of %s: %s", " > ".join(caller.principal.chain), reason)
        self.guard.refused(caller.principal, method if isinstance(method, str) else None, f"mcp-guard refused a new session: {reason}")
        headers = {"Retry-After": "60"} if status == 503 else {}
        return JSONResponse(error(message.get("id"), INVALID_REQUEST, f"Too many sessions: {reason}"), status_code=status,
                            headers=headers)

    def _touch(self, entry: SessionEntry) -> None:
        entry.used = time.monotonic()
        mine = self.owned.get(entry.owner)
        if mine is not None and entry.key in mine:
            mine.move_to_end(entry.key)

    def _drop(self, key: str) -> SessionEntry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.by_session_key.pop(entry.session.key, None)
            left = self.rooted.get(entry.root, 0) - 1
            if left > 0:
                self.rooted[entry.root] = left
            else:
                self.rooted.pop(entry.root, None)
            mine = self.owned.get(entry.owner)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self.owned[entry.owner]
        return entry

    async def expire_idle(self, now: float | None = None) -> int:
        """Close every session nobody used for ``serve.session_idle`` (none with a call in flight)."""
        now = time.monotonic() if now is None else now
        stale = [k for k, e in self.entries.items() if not e.busy and now - e.used > self.serve.session_idle]
        for key in stale:
            entry = self._drop(key)
            if entry is not None:
                await entry.close("Session expired")
        return len(stale)

    async def _sweep(self) -> None:
        every = max(1.0, min(60.0, self.serve.session_idle / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.expire_idle()
            except Exception:  # a failing close must not stop the sweeper
                log.exception("closing idle sessions failed")
