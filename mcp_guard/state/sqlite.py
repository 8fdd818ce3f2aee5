"""``sqlite:///path``: the embedded default, shared by every guard process and the CLI on a machine.

WAL mode lets readers run beside the one writer; every read-modify-write is a ``BEGIN IMMEDIATE``
transaction, which takes the database's write lock first, so counters are atomic across processes.
Transactions take microseconds, so they run synchronously inside the coroutine (no thread hop on
the hot path); a process that finds the lock held waits up to ``BUSY_TIMEOUT`` seconds, then the
operation fails closed with StateError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    APPROVAL_POLL,
    APPROVAL_RETENTION,
    APPROVED,
    EXPIRED,
    PENDING,
    RATE_WINDOW,
    REJECTED,
    Counter,
    approval_record,
    merge_counters,
    new_approval_id,
    normalise_approval_id,
)

BUSY_TIMEOUT = 5.0
SCHEMA_VERSION = 1
GC_EVERY = 4096  # writes between sweeps of expired counters, idle rate windows and old approvals

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate_events (key TEXT NOT NULL, t REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_events_key_t ON rate_events (key, t);
CREATE TABLE IF NOT EXISTS revocations (
    jti TEXT PRIMARY KEY, reason TEXT, revoked_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, expires_at REAL,
    resolved REAL, approver TEXT, reason TEXT, record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, created);
"""


def sqlite_path(url: str) -> Path:
    """``sqlite:////abs/path.db`` is absolute; ``sqlite:///rel/path.db`` is relative to the cwd."""
    rest = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not rest:
        raise StateError(f"the state URL {url} names no database file (write sqlite:////absolute/path.db)")
    return Path(rest) if rest.startswith("/") else Path.cwd() / rest


class SqliteStore:
    """One connection per store; safe across processes, not shared across threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._writes = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StateError(f"cannot create the state database {self.path}: {exc.strerror or exc}") from None
        try:
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._setup()
                break
            except (sqlite3.OperationalError, StateError) as exc:
                # Two processes opening a new database at once: switching it to WAL (and a
                # SHARED->RESERVED upgrade in rollback mode) can fail at once with "locked",
                # without the busy handler; the loser simply tries again.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    self._db.close()
                    raise self._error(exc) if isinstance(exc, sqlite3.Error) else exc from None
                time.sleep(0.02)
            except sqlite3.Error as exc:
                self._db.close()
                raise self._error(exc) from None

    # -- plumbing

    def _error(self, exc: sqlite3.Error) -> StateError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StateError(f"the state database {self.path} stayed locked by another process for {BUSY_TIMEOUT:g} s")
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            return StateError(f"the state database {self.path} is corrupt ({text}); move it aside to start afresh")
        return StateError(f"the state database {self.path} failed: {text}")

    def _setup(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(f"the state database {self.path} cannot use WAL mode (journal mode is {mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        with self._tx():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the state database {self.path} was written by a newer mcp-guard (schema {version})"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._gc(time.time())

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock is taken up front, so no lost updates."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from None
            raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _gc(self, now: float) -> None:
        db = self._db
        db.execute("DELETE FROM counters WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        db.execute("DELETE FROM rate_events WHERE t <= ?", (now - RATE_WINDOW,))
        db.execute("DELETE FROM approvals WHERE status != ? AND created <= ?", (PENDING, now - APPROVAL_RETENTION))

    def _tick(self, now: float) -> None:
        self._writes += 1
        if self._writes % GC_EVERY == 0:
            self._gc(now)

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

    # -- revocations

    async def revoke(self, jti: str, reason: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO revocations (jti, reason, revoked_at) VALUES (?, ?, ?)",
                (jti, reason, time.time()),
            )

    async def revoked(self, jtis: Sequence[str]) -> str | None:
        if not jtis:
            return None
        marks = ",".join("?" * len(jtis))
        rows = self._query(f"SELECT jti FROM revocations WHERE jti IN ({marks})", tuple(jtis))
        if not rows:
            return None
        found = {r[0] for r in rows}
        return next(j for j in jtis if j in found)

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
        approval_id = normalise_approval_id(approval_id)
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE approvals SET status = ?, approver = ?, reason = ?, resolved = ? "
                "WHERE id = ? AND status = ? AND (expires_at IS NULL OR expires_at > ?)",
                (APPROVED if approved else REJECTED, approver, reason, now, approval_id, PENDING, now),
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

    async def ping(self) -> None:
        self._query("SELECT 1 FROM counters LIMIT 1")

    async def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
