"""``sqlite:///path``: the embedded default, shared by every guard process and the CLI on a machine.

Every read-modify-write below is one ``BEGIN IMMEDIATE`` transaction of ``SqliteDatabase``
(sqlite_db.py: the connection, the schema and the files under it), so each is atomic across
processes.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import orjson

from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    ABANDONED,
    APPROVAL_POLL,
    APPROVED,
    EMPTY_FLOW,
    EXPIRED,
    PENDING,
    RATE_WINDOW,
    REJECTED,
    Counter,
    FlowPiece,
    LabelOrigin,
    RevocationCache,
    SessionFlow,
    approval_record,
    fresh_version,
    merge_counters,
    new_approval_id,
    normalise_approval_id,
    plan_flow_add,
)
from mcp_guard.state.sqlite_db import (
    BUSY_TIMEOUT,
    SCHEMA_VERSION,
    SqliteDatabase,
    has_holders,
    holders_dir,
    sqlite_path,
)

__all__ = ["BUSY_TIMEOUT", "SCHEMA_VERSION", "SqliteStore", "has_holders", "holders_dir", "sqlite_path"]

FLOW_TOUCH = 1 / 24  # a read refreshes a scope's last use once older than this part of its lifetime (hourly)
FLOW_CACHE = 64  # scopes whose state this process keeps: an unchanged one costs one lookup, a changed one its news


class SqliteStore(SqliteDatabase):
    """Budgets, rates, values, revocations, approvals and session flow state in one sqlite file."""

    def __init__(self, url: str, *, holder: bool = False) -> None:
        super().__init__(url, holder=holder)
        self._own_revokes = 0  # data_version does not move for this connection's own commits
        self._data_version = -1
        self._seen_header: tuple[int, bytes | None] = (-1, None)  # (connection, WAL-index header) of that version
        self._revocations = RevocationCache()
        self._flows: dict[str, tuple[str, SessionFlow]] = {}  # scope -> (epoch, the state last read)

    # -- budgets and rates

    async def consume(self, counters: Sequence[Counter]) -> str | None:
        merged = merge_counters(counters)
        now = time.time()
        if not merged:
            return None
        marks = ",".join("?" * len(merged))
        with self._tx() as db:
            rows = db.execute(
                f"SELECT key, value FROM counters WHERE key IN ({marks}) AND (expires_at IS NULL OR expires_at > ?)",
                (*(c.key for c in merged), now),
            ).fetchall()
            current = dict(rows)
            values: list[int] = []
            for c in merged:
                value = int(current.get(c.key, 0))
                if value >= c.limit:
                    return c.key
                values.append(value)
            db.executemany(
                "INSERT OR REPLACE INTO counters (key, value, expires_at) VALUES (?, ?, ?)",
                [(c.key, v + 1, c.expires_at) for c, v in zip(merged, values, strict=True)],
            )
            self._tick(now)
        return None

    async def rate(self, key: str, per_minute: int, now: float | None = None) -> bool:
        t = time.time() if now is None else now
        with self._tx() as db:
            db.execute("DELETE FROM rate_events WHERE key = ? AND t <= ?", (key, t - RATE_WINDOW))
            (count,) = db.execute("SELECT COUNT(*) FROM rate_events WHERE key = ?", (key,)).fetchone()
            if count >= per_minute:
                return False
            db.execute("INSERT INTO rate_events (key, t) VALUES (?, ?)", (key, t))
            self._tick(t)
        return True

    # -- keyed values

    async def value_set(self, key: str, value: str, expires_at: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?, ?, ?)", (key, value, expires_at))
            self._tick(now)

    async def value_get(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM kv WHERE key = ? AND expires_at > ?", (key, time.time()))
        return str(rows[0][0]) if rows else None

    # -- revocations

    async def revoke(self, jti: str, reason: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO revocations (jti, reason, revoked_at) VALUES (?, ?, ?)",
                (jti, reason, time.time()),
            )
        self._own_revokes += 1

    async def revocation_signal(self) -> Hashable:
        return self._signal()

    def _signal(self) -> Hashable:
        """``PRAGMA data_version`` moves when another connection (any process) commits; this
        connection's own revocations are counted beside it. No table is read.

        The pragma is asked only when the WAL-index header moved: every commit, by any connection,
        rewrites that header, so while it reads as before no other connection has committed and the
        version read last is still the answer (a memory read instead of a statement). The header
        is read before the pragma, so a commit landing between the two moves it for the next call.
        """
        self._check()
        seen = (self._connections, self.wal_header())
        if seen[1] is None or seen != self._seen_header:
            (self._data_version,) = self._query("PRAGMA data_version")[0]
            self._seen_header = seen
        return (self._connections, self._data_version, self._own_revokes)

    async def revoked(self, jtis: Sequence[str]) -> str | None:
        if not jtis:
            return None
        key = tuple(jtis)
        signal = self._signal()  # read on every call (no coroutine of its own): the "next call" bound
        known = self._revocations.lookup(signal, key)
        if known is not None:
            return known[0]
        marks = ",".join("?" * len(key))
        rows = self._query(f"SELECT jti FROM revocations WHERE jti IN ({marks})", key)
        found = {r[0] for r in rows}
        answer = next((j for j in key if j in found), None)
        self._revocations.keep(signal, key, answer)
        return answer

    # -- approvals

    async def approval_create(self, record: Mapping[str, Any]) -> str:
        now = time.time()
        with self._tx() as db:
            while True:
                approval_id = new_approval_id()
                if db.execute("SELECT 1 FROM approvals WHERE id = ?", (approval_id,)).fetchone() is None:
                    break
            stored = approval_record(record, approval_id, now)
            try:
                blob = orjson.dumps(stored)
            except TypeError as exc:
                raise StateError(f"the approval request cannot be stored: {exc}") from None
            expires = stored.get("expires_at")
            db.execute(
                "INSERT INTO approvals (id, status, created, expires_at, record) VALUES (?, ?, ?, ?, ?)",
                (approval_id, PENDING, float(stored["created"]), expires if isinstance(expires, int | float) else None, blob),
            )
        return approval_id

    @staticmethod
    def _row(row: Sequence[Any]) -> dict[str, Any]:
        status, resolved, approver, reason, blob = row
        record: dict[str, Any] = orjson.loads(blob)
        record["status"] = status
        if status != PENDING:
            record.update(resolved=resolved, approver=approver, reason=reason)
        return record

    def _expire_overdue(self, now: float, approval_id: str | None = None) -> None:
        sql = "UPDATE approvals SET status = ?, resolved = ? WHERE status = ? AND expires_at IS NOT NULL AND expires_at <= ?"
        params: tuple[Any, ...] = (EXPIRED, now, PENDING, now)
        if approval_id is not None:
            sql += " AND id = ?"
            params += (approval_id,)
        with self._tx() as db:
            db.execute(sql, params)

    _COLS = "status, resolved, approver, reason, record"

    def _get(self, approval_id: str) -> dict[str, Any] | None:
        rows = self._query(f"SELECT {self._COLS}, expires_at FROM approvals WHERE id = ?", (approval_id,))
        if not rows:
            return None
        *row, expires = rows[0]
        now = time.time()
        if row[0] == PENDING and expires is not None and expires <= now:
            self._expire_overdue(now, approval_id)
            return self._get(approval_id)
        return self._row(row)

    async def approval_get(self, approval_id: str) -> dict[str, Any] | None:
        return self._get(normalise_approval_id(approval_id))

    async def approval_resolve(
        self, approval_id: str, approved: bool, approver: str, reason: str | None = None
    ) -> bool:
        return self._settle(approval_id, APPROVED if approved else REJECTED, approver, reason)

    async def approval_abandon(self, approval_id: str, reason: str) -> bool:
        return self._settle(approval_id, ABANDONED, "mcp-guard", reason)

    def _settle(self, approval_id: str, status: str, approver: str, reason: str | None) -> bool:
        approval_id = normalise_approval_id(approval_id)
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE approvals SET status = ?, approver = ?, reason = ?, resolved = ? "
                "WHERE id = ? AND status = ? AND (expires_at IS NULL OR expires_at > ?)",
                (status, approver, reason, now, approval_id, PENDING, now),
            )
            done = cur.rowcount == 1
        if not done:
            self._expire_overdue(now, approval_id)
        return done

    async def approval_list(self, pending_only: bool = True) -> list[dict[str, Any]]:
        self._expire_overdue(time.time())
        if pending_only:
            rows = self._query(f"SELECT {self._COLS} FROM approvals WHERE status = ? ORDER BY created", (PENDING,))
        else:
            rows = self._query(f"SELECT {self._COLS} FROM approvals ORDER BY created")
        return [self._row(r) for r in rows]

    async def approval_wait(self, approval_id: str, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        approval_id = normalise_approval_id(approval_id)
        deadline = time.monotonic() + timeout
        while True:
            record = self._get(approval_id)
            if record is None or record["status"] == EXPIRED:
                return None
            if record["status"] != PENDING:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                with self._tx() as db:
                    db.execute(
                        "UPDATE approvals SET status = ?, resolved = ? WHERE id = ? AND status = ?",
                        (EXPIRED, time.time(), approval_id, PENDING),
                    )
                    changed = db.execute("SELECT changes()").fetchone()[0]
                if changed:
                    return None
                continue  # answered at the last moment: return that answer
            await asyncio.sleep(min(APPROVAL_POLL, left))

    # -- session flow state

    def _flow_state(self, db: sqlite3.Connection, scope: str, row: Sequence[Any]) -> SessionFlow:
        """The state of ``scope`` whose ``flow_scopes`` row is ``row``, read inside a transaction."""
        epoch, version, size, overflow, count = row[:5]
        labels = {
            label: LabelOrigin(label, source, record)
            for label, source, record in db.execute(
                "SELECT label, source, record FROM flow_labels WHERE scope = ?", (scope,)
            ).fetchall()
        }
        cached_epoch, cached = self._flows.pop(scope, ("", EMPTY_FLOW))
        pieces = cached.pieces if cached_epoch == epoch and len(cached.pieces) <= count else ()
        if len(pieces) < count:
            rows = db.execute(
                "SELECT labels, text FROM flow_pieces WHERE scope = ? AND seq >= ? ORDER BY seq", (scope, len(pieces))
            ).fetchall()
            pieces += tuple(FlowPiece(frozenset(orjson.loads(ls)), text) for ls, text in rows)
        flow = SessionFlow(labels=labels, pieces=pieces, content_bytes=size, overflow=bool(overflow), version=version)
        self._flows[scope] = (epoch, flow)  # most recently used last
        while len(self._flows) > FLOW_CACHE:
            del self._flows[next(iter(self._flows))]
        return flow

    _FLOW_COLS = "epoch, version, bytes, overflow, pieces, touched"

    async def flow_get(self, scope: str) -> SessionFlow:
        now = time.time()
        rows = self._query("SELECT epoch, version, touched FROM flow_scopes WHERE scope = ?", (scope,))
        if not rows or rows[0][2] <= now - self.flow_ttl:
            return EMPTY_FLOW
        epoch, version, touched = rows[0]
        cached = self._flows.get(scope)
        if cached is not None and cached[0] == epoch and cached[1].version == version:
            flow = cached[1]  # unchanged since this process last read it: one indexed lookup
        else:
            with self._read() as db:
                row = db.execute(f"SELECT {self._FLOW_COLS} FROM flow_scopes WHERE scope = ?", (scope,)).fetchone()
                if row is None:
                    return EMPTY_FLOW
                flow = self._flow_state(db, scope, row)
        if now - touched > self.flow_ttl * FLOW_TOUCH:
            with self._tx() as db:
                db.execute("UPDATE flow_scopes SET touched = MAX(touched, ?) WHERE scope = ?", (now, scope))
        return flow

    async def flow_add(
        self, scope: str, origins: Sequence[LabelOrigin], pieces: Sequence[FlowPiece], max_bytes: int
    ) -> SessionFlow:
        try:
            return self._flow_add(scope, origins, pieces, max_bytes, time.time())
        except BaseException:
            self._flows.pop(scope, None)  # the cache may hold what the failed transaction did not keep
            raise

    def _flow_add(
        self, scope: str, origins: Sequence[LabelOrigin], pieces: Sequence[FlowPiece], max_bytes: int, now: float
    ) -> SessionFlow:
        with self._tx() as db:
            row = db.execute(f"SELECT {self._FLOW_COLS} FROM flow_scopes WHERE scope = ?", (scope,)).fetchone()
            if row is not None and row[5] <= now - self.flow_ttl:
                self._forget_flows(db, "scope = ?", (scope,))
                row = None
            held = (
                {r[0]: None for r in db.execute("SELECT label FROM flow_labels WHERE scope = ?", (scope,))}
                if row is not None
                else {}
            )

            def has_piece(digest: str) -> bool:
                found = db.execute("SELECT 1 FROM flow_pieces WHERE scope = ? AND digest = ?", (scope, digest))
                return found.fetchone() is not None

            size, overflow, count = (row[2], bool(row[3]), row[4]) if row is not None else (0, False, 0)
            change = plan_flow_add(held, has_piece, size, overflow, origins, pieces, max_bytes)
            if not change.changed:
                if row is None:
                    return EMPTY_FLOW
                db.execute("UPDATE flow_scopes SET touched = ? WHERE scope = ?", (now, scope))
                return self._flow_state(db, scope, row)
            if row is None:
                epoch, version = secrets.token_hex(8), fresh_version(now)
            else:
                epoch, version = row[0], row[1]
            db.executemany(
                "INSERT INTO flow_labels (scope, label, source, record) VALUES (?, ?, ?, ?)",
                [(scope, o.label, o.source, o.record) for o in change.origins],
            )
            db.executemany(
                "INSERT INTO flow_pieces (scope, seq, digest, labels, text) VALUES (?, ?, ?, ?, ?)",
                [
                    (scope, count + i, digest, orjson.dumps(sorted(p.labels)).decode(), p.text)
                    for i, (digest, p) in enumerate(change.pieces)
                ],
            )
            new_row = (epoch, version + 1, change.content_bytes, int(change.overflow), count + len(change.pieces), now)
            db.execute(
                "INSERT OR REPLACE INTO flow_scopes (scope, epoch, version, bytes, overflow, pieces, touched) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (scope, *new_row),
            )
            self._tick(now)
            return self._flow_state(db, scope, new_row)
