"""The sqlite store's database: its connection, schema (upgraded in place) and the files under it.

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

import contextlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mcp_guard.errors import StateError
from mcp_guard.state.base import APPROVAL_RETENTION, FLOW_TTL, PENDING, RATE_WINDOW

log = logging.getLogger("mcp_guard.state")

BUSY_TIMEOUT = 5.0
SCHEMA_VERSION = 3  # 2: the values table; 3: the flow tables
GC_EVERY = 4096  # writes between sweeps of expired counters, idle rate windows and old approvals
CHECK_EVERY = 0.1  # seconds between full checks (which file each path is, is each writable) while all is well

Ident = tuple[int, int] | None  # (st_dev, st_ino) of a file, None when it does not exist

WAL_HEADER = 48
"""Bytes of the WAL-index header at the start of the ``-shm`` file (SQLite's documented WAL-mode
file format): every commit by any connection rewrites it (its change counter, frame count and
checksums), so while it reads the same, no other connection has committed."""
WAL_INDEX_VERSION = 3007000  # the header's iVersion (native byte order) since SQLite 3.7.0

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
CREATE TABLE IF NOT EXISTS flow_scopes (
    scope TEXT PRIMARY KEY, epoch TEXT NOT NULL, version INTEGER NOT NULL, bytes INTEGER NOT NULL,
    overflow INTEGER NOT NULL, pieces INTEGER NOT NULL, touched REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS flow_scopes_touched ON flow_scopes (touched);
CREATE TABLE IF NOT EXISTS flow_labels (
    scope TEXT NOT NULL, label TEXT NOT NULL, source TEXT NOT NULL, record INTEGER, PRIMARY KEY (scope, label)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flow_pieces (
    scope TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL, labels TEXT NOT NULL, text TEXT NOT NULL,
    UNIQUE (scope, seq), UNIQUE (scope, digest)
);
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


class SqliteDatabase:
    """The connection, its schema and the files under it; the operations are ``SqliteStore``'s.

    One connection per store; safe across processes, not shared across threads.

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
        self._connections = 0  # connections opened so far: a reopened file starts a new data_version series
        self._shm = -1  # SQLite's own descriptor of the -shm file, when found (see wal_header)
        self.flow_ttl = FLOW_TTL
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
        self._connections += 1
        self._shm = self._find_shm()
        self._next_check = time.monotonic() + CHECK_EVERY
        if self._holder and self._idents[0] is not None:
            dev, ino = self._idents[0]
            with contextlib.suppress(OSError):
                self._holders.mkdir(mode=0o700, exist_ok=True)
                (self._holders / str(os.getpid())).write_text(f"{dev} {ino}\n", encoding="ascii")

    def _find_shm(self) -> int:
        """SQLite's own open descriptor of the ``-shm`` file, or -1 (then ``wal_header`` is None).

        Never a descriptor of our own: closing any descriptor of a file drops every POSIX lock the
        process holds on it, SQLite's included, and another process would then take the WAL index
        for unused and reset it. SQLite keeps its descriptor while the connection is open; after a
        reopen (``_remember``) it is looked up again."""
        try:
            want = os.stat(self._files[2])
            names = os.listdir("/proc/self/fd")  # Linux; elsewhere the pragma is asked every time
        except OSError:
            return -1
        for name in names:
            try:
                fd = int(name)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino) and st.st_size >= 2 * WAL_HEADER \
                        and int.from_bytes(os.pread(fd, 4, 0), sys.byteorder) == WAL_INDEX_VERSION:
                    return fd
            except (OSError, ValueError):
                continue
        return -1

    def wal_header(self) -> bytes | None:
        """The WAL-index header as it is now (read from the page cache SQLite's shared mapping
        writes to; torn by a concurrent commit at worst, which only reads as a change), or None
        when there is no descriptor to read it through: then ask SQLite."""
        if self._shm < 0:
            return None
        try:
            return os.pread(self._shm, WAL_HEADER, 0)
        except OSError:
            return None

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

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock is taken up front, so no lost updates."""
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A read transaction: every statement in it sees one snapshot (WAL), taking no write lock."""
        return self._transaction("BEGIN")

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """``begin`` … ``COMMIT``, rolled back on any error; a sqlite error becomes the store's StateError."""
        self._check()
        db = self._db
        try:
            db.execute(begin)
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
        self._forget_flows(db, "touched <= ?", (now - self.flow_ttl,))

    @staticmethod
    def _forget_flows(db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> None:
        """Delete the flow state of the scopes ``where`` selects in ``flow_scopes``."""
        scopes = f"SELECT scope FROM flow_scopes WHERE {where}"
        db.execute(f"DELETE FROM flow_labels WHERE scope IN ({scopes})", params)
        db.execute(f"DELETE FROM flow_pieces WHERE scope IN ({scopes})", params)
        db.execute(f"DELETE FROM flow_scopes WHERE {where}", params)

    def _tick(self, now: float) -> None:
        self._writes += 1
        if self._writes % GC_EVERY == 0:
            self._gc(self._db, now)

    async def ping(self) -> None:
        self._query("SELECT 1 FROM counters LIMIT 1")

    async def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._shm = -1
        if self._holder:
            with contextlib.suppress(OSError):
                os.unlink(self._holders / str(os.getpid()))
