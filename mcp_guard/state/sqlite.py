"""``sqlite:///path``: the embedded default, shared by every guard process and the CLI on a machine.

WAL mode lets readers run beside the one writer; every read-modify-write is a ``BEGIN IMMEDIATE``
transaction, which takes the database's write lock first, so counters are atomic across processes.
Transactions take microseconds, so they run synchronously inside the coroutine (no thread hop on
the hot path); a process that finds the lock held waits up to ``BUSY_TIMEOUT`` seconds, then the
operation fails closed with StateError.

The files under the open connection are watched: before each operation one ``access`` of the
``-shm`` file (still there and writable?  SQLite maps it into memory, and writing to a mapped file
that was made immutable kills the process with SIGBUS); every ``CHECK_EVERY`` seconds, whether each
path still names the file the connection uses and is writable.  A deleted, replaced or
read-only file refuses every operation with one sentence (logged once) until a valid database is
back, and a guard that holds the database records itself in ``<db>.guards/<pid>`` so the CLI will
not create a fresh, empty database in place of one a running guard still uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    ABANDONED,
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

log = logging.getLogger("mcp_guard.state")

BUSY_TIMEOUT = 5.0
SCHEMA_VERSION = 2  # 2: the values table
GC_EVERY = 4096  # writes between sweeps of expired counters, idle rate windows and old approvals
CHECK_EVERY = 0.1  # seconds between full checks (which file each path is, is each writable) while all is well

Ident = tuple[int, int] | None  # (st_dev, st_ino) of a file, None when it does not exist

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
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;
"""


def sqlite_path(url: str) -> Path:
    """``sqlite:////abs/path.db`` is absolute; ``sqlite:///rel/path.db`` is relative to the cwd."""
    rest = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not rest:
        raise StateError(f"the state URL {url} names no database file (write sqlite:////absolute/path.db)")
    return Path(rest) if rest.startswith("/") else Path.cwd() / rest


def holders_dir(path: Path) -> Path:
    """Where the guards holding database ``path`` record themselves (``<db>.guards/<pid>``)."""
    return Path(f"{path}.guards")


def has_holders(path: Path) -> bool:
    """Whether some guard has recorded itself as holding database ``path`` (alive or not)."""
    holders = holders_dir(path)
    return holders.is_dir() and any(holders.iterdir())


class SqliteStore:
    """One connection per store; safe across processes, not shared across threads.

    ``holder=True`` (a running guard) records this process in ``<db>.guards/<pid>`` while the store
    is open; any process about to create the database file refuses while a live holder exists.
    """

    def __init__(self, url: str, *, holder: bool = False) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._files = (str(self.path), f"{self.path}-wal", f"{self.path}-shm")
        self._holders = holders_dir(self.path)
        self._holder = holder
        self._writes = 0
        self._idents: tuple[Ident, ...] = ()
        self._problem: str | None = None  # why the store refuses now (logged once), None when usable
        self._next_check = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._refuse_if_lost()
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StateError(f"cannot create the state database {self.path}: {exc.strerror or exc}") from None
        self._db = self._open(create=True)
        self._remember()

    # -- plumbing

    def _open(self, *, create: bool) -> sqlite3.Connection:
        """A connection set up for use; ``create=False`` accepts only an existing mcp-guard database."""
        try:
            if create:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            else:
                db = sqlite3.connect(
                    self.path.as_uri() + "?mode=rw", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._setup(db, create=create)
                return db
            except (sqlite3.OperationalError, StateError) as exc:
                # Two processes opening a new database at once: switching it to WAL (and a
                # SHARED->RESERVED upgrade in rollback mode) can fail at once with "locked",
                # without the busy handler; the loser simply tries again.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    db.close()
                    raise self._error(exc) if isinstance(exc, sqlite3.Error) else exc from None
                time.sleep(0.02)
            except sqlite3.Error as exc:
                db.close()
                raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> StateError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StateError(f"the state database {self.path} stayed locked by another process for {BUSY_TIMEOUT:g} s")
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            return StateError(f"the state database {self.path} is corrupt ({text}); move it aside to start afresh")
        return StateError(f"the state database {self.path} failed: {text}")

    # -- the files under the connection

    def _stat_all(self) -> tuple[Ident, ...]:
        out: list[Ident] = []
        for name in self._files:
            try:
                st = os.stat(name)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_dev, st.st_ino))
        return tuple(out)

    def _remember(self) -> None:
        """Note which files the connection uses now (and, for a guard, tell other processes)."""
        self._idents = self._stat_all()
        self._next_check = time.monotonic() + CHECK_EVERY
        if self._holder and self._idents[0] is not None:
            dev, ino = self._idents[0]
            with contextlib.suppress(OSError):
                self._holders.mkdir(mode=0o700, exist_ok=True)
                (self._holders / str(os.getpid())).write_text(f"{dev} {ino}\n", encoding="ascii")

    def _live_holders(self) -> dict[int, Ident]:
        """Other live guard processes holding this database path, with the file each has open."""
        out: dict[int, Ident] = {}
        try:
            names = os.listdir(self._holders)
        except OSError:
            return out
        for name in names:
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                os.kill(int(name), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(self._holders / name)  # left behind by a guard that died
                continue
            except PermissionError:
                pass  # alive, another user's
            try:
                dev, ino = (int(x) for x in (self._holders / name).read_text(encoding="ascii").split())
                out[int(name)] = (dev, ino)
            except (OSError, ValueError):
                out[int(name)] = None
        return out

    def _refuse_if_lost(self) -> None:
        """Never create a fresh database where a running guard's database was deleted: the guard
        still reads the deleted file, so revocations and budgets written here would never reach it."""
        try:
            st = os.stat(self.path)
            current: Ident = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        lost = [pid for pid, ident in self._live_holders().items() if ident != current]
        if not lost or (current is not None and self._is_state_database()):
            return  # no guard lost its file, or a valid database is there (such guards switch to it)
        raise StateError(
            f"the state database {self.path} is missing or not initialised, but mcp-guard process {lost[0]} still uses "
            f"the deleted one: restore the file or stop that guard (a new, empty database would not reach it; "
            f"remove {self._holders / str(lost[0])} if no guard runs)"
        )

    def _is_state_database(self) -> bool:
        try:
            with contextlib.closing(sqlite3.connect(self.path.as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as db:
                return bool(db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION)
        except sqlite3.Error:
            return False

    def _check(self) -> None:
        """Refuse (StateError) while the files under the connection are gone, replaced or read-only."""
        # one syscall per operation: the -shm file SQLite maps must still be there and writable
        # (a write to a mapped immutable file is SIGBUS); the rest is looked at every CHECK_EVERY
        if self._problem is None and os.access(self._files[2], os.W_OK):
            now = time.monotonic()
            if now < self._next_check:
                return
            self._next_check = now + CHECK_EVERY
        problem = self._diagnose()
        if problem != self._problem:
            if problem is None:
                log.warning("the state database %s is usable again", self.path)
            else:
                log.error("%s", problem)
            self._problem = problem
        if problem is not None:
            raise StateError(problem)

    def _diagnose(self) -> str | None:
        """The one-sentence problem with the files, or None; switches to a valid replacement database."""
        idents = self._stat_all()
        if idents[0] is None:
            return (
                f"the state database {self.path} was deleted while mcp-guard was using it; "
                "calls that need it are refused until it is restored"
            )
        if idents != self._idents:  # the database, its -wal or its -shm file was replaced or deleted
            # Close first: SQLite shares one -shm mapping per file within a process, and closing
            # lets it fold a still-readable -wal into the database when the database itself stayed.
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            try:
                self._db = self._open(create=False)
            except StateError as exc:
                return f"the state database {self.path} was replaced by a file mcp-guard cannot use ({exc}); calls that need it are refused"
            self._remember()
            log.warning("the state database %s was replaced or lost its -wal/-shm file; mcp-guard reopened it", self.path)
        for name in self._files:
            if not os.access(name, os.W_OK):
                return (
                    f"the state database {self.path} is not writable ({name} is read-only); "
                    "calls that need it are refused until it is writable again"
                )
        return None

    def _failed(self, exc: sqlite3.Error) -> StateError:
        """The StateError for a failed statement: the files' problem when there is one."""
        problem = self._diagnose()
        if problem is None:
            return self._error(exc)
        if problem != self._problem:
            log.error("%s", problem)
            self._problem = problem
        return StateError(problem)

    def _setup(self, db: sqlite3.Connection, *, create: bool) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        # Never map the database file into memory: a mapped page of a file that became read-only
        # or was truncated under us kills the process (SIGBUS) instead of failing one call.
        db.execute("PRAGMA mmap_size = 0")
        if not create and db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            raise StateError(f"{self.path} is not an mcp-guard state database of this version")  # left untouched
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(f"the state database {self.path} cannot use WAL mode (journal mode is {mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
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
            self._gc(db, time.time())
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock is taken up front, so no lost updates."""
        self._check()
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._failed(exc) from None
            raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._check()
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    def _gc(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("DELETE FROM counters WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        db.execute("DELETE FROM rate_events WHERE t <= ?", (now - RATE_WINDOW,))
        db.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM approvals WHERE status != ? AND created <= ?", (PENDING, now - APPROVAL_RETENTION))

    def _tick(self, now: float) -> None:
        self._writes += 1
        if self._writes % GC_EVERY == 0:
            self._gc(self._db, now)

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

    async def ping(self) -> None:
        self._query("SELECT 1 FROM counters LIMIT 1")

    async def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._holder:
            with contextlib.suppress(OSError):
                os.unlink(self._holders / str(os.getpid()))
