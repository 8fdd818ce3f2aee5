"""Revocation by change signal: every store answers ``revoked`` from what it read last while its
signal stays, re-reads when the signal moves (whoever revoked, in whichever process), and fails
closed when the signal itself cannot be read."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.own_redis import subscribed

from mcp_guard.errors import StateError
from mcp_guard.state import Counter, StateStore, open_store
from mcp_guard.state.base import RevocationCache
from mcp_guard.state.redis import RedisStore
from mcp_guard.state.sqlite import SqliteStore

HERE = Path(__file__).parent
CHAIN = ["root-jti", "planner-jti", "coder-jti"]


async def _other_process(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "stateproc.py"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


# --------------------------------------------------------------------------- every store


async def test_the_signal_moves_with_a_new_revocation_and_not_with_budgets(store: StateStore) -> None:
    if isinstance(store, RedisStore):
        await subscribed(store)  # Redis subscribes on first use: its confirmation moves the signal once
    first = await store.revocation_signal()
    assert await store.revocation_signal() == first
    await store.consume([Counter("session:s:k", 5)])
    await store.rate("rate:k", 10)
    await store.value_set("v", "x", time.time() + 60)
    assert await store.revocation_signal() == first
    await store.revoke("planner-jti")
    assert await store.revocation_signal() != first


async def test_a_kept_answer_gives_way_to_a_revocation_through_another_handle(store_url: str, store: StateStore) -> None:
    other = store if store_url.startswith("memory://") else open_store(store_url)
    try:
        for _ in range(3):  # the answer is kept now
            assert await store.revoked(CHAIN) is None
        await other.revoke("coder-jti")
        assert await store.revoked(CHAIN) == "coder-jti"
        await other.revoke("root-jti")
        assert await store.revoked(CHAIN) == "root-jti"  # the first in chain order, not the first revoked
        assert await store.revoked(["unrelated"]) is None
    finally:
        if other is not store:
            await other.close()


async def test_answers_are_kept_per_chain(store: StateStore) -> None:
    await store.revoke("leaf")
    assert await store.revoked(["root", "leaf"]) == "leaf"
    assert await store.revoked(["root"]) is None
    assert await store.revoked(["root", "leaf"]) == "leaf"
    assert await store.revoked(["leaf", "root"]) == "leaf"


# --------------------------------------------------------------------------- another process


async def test_another_process_revoking_is_seen_on_the_next_call_after_its_budget_writes(shared_url: str, tmp_path: Path) -> None:
    """The other process first writes budgets only (sqlite's data_version moves, the answer stays
    right), then revokes: the very next call here sees it."""
    store = open_store(shared_url)
    try:
        for _ in range(3):
            assert await store.revoked(CHAIN) is None
        go = tmp_path / "go"
        go.touch()
        assert await _other_process("consume", shared_url, "session:other", "50", "20", str(go)) == "ready\n20"
        assert await store.revoked(CHAIN) is None
        assert await _other_process("revoke", shared_url, "planner-jti") == "revoked"
        assert await store.revoked(CHAIN) == "planner-jti"
    finally:
        await store.close()


# --------------------------------------------------------------------------- fail closed


def _delete(db: Path, *suffixes: str) -> None:
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


async def test_sqlite_asks_for_data_version_only_when_the_wal_header_moved(tmp_path: Path) -> None:
    """While no connection commits, the signal is a read of the mapped WAL-index header: no
    statement at all; another connection's commit (a budget, then a revocation) moves the header,
    and the pragma is asked once for it (then the revocations are read again, as for any write of
    another process); this connection's own commits move the header but not data_version, so
    they cost a pragma and change no answer."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store, other = open_store(url), open_store(url)
    assert isinstance(store, SqliteStore) and store.wal_header() is not None
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        assert await store.revoked(CHAIN) is None
        statements.clear()
        for _ in range(3):
            assert await store.revoked(CHAIN) is None
        assert statements == []
        before = store.wal_header()
        await other.consume([Counter("session:o:k", 5)])
        assert store.wal_header() != before
        assert await store.revoked(CHAIN) is None
        assert statements[0] == "PRAGMA data_version" and statements[1].startswith("SELECT jti")  # another's commit
        statements.clear()
        assert await store.revoked(CHAIN) is None
        assert statements == []
        await store.consume([Counter("session:s:k", 5)])
        signal = await store.revocation_signal()
        assert await store.revocation_signal() == signal
        assert await store.revoked(CHAIN) is None
        assert not any(s.startswith("SELECT jti") for s in statements)
        await other.revoke("coder-jti")
        assert await store.revoked(CHAIN) == "coder-jti"
    finally:
        await store.close()
        await other.close()


async def test_sqlite_without_the_wal_header_asks_sqlite_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store, other = open_store(url), open_store(url)
    assert isinstance(store, SqliteStore)
    monkeypatch.setattr(store, "wal_header", lambda: None)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        for _ in range(3):
            assert await store.revoked(CHAIN) is None
        assert statements.count("PRAGMA data_version") == 3
        await other.revoke("root-jti")
        assert await store.revoked(CHAIN) == "root-jti"
    finally:
        await store.close()
        await other.close()


async def test_sqlite_refuses_instead_of_a_kept_answer_when_the_database_is_gone(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = open_store(f"sqlite:///{db}")
    try:
        assert await store.revoked(CHAIN) is None
        assert await store.revoked(CHAIN) is None  # kept
        _delete(db, "", "-wal", "-shm")
        with pytest.raises(StateError, match="deleted"):
            await store.revocation_signal()
        with pytest.raises(StateError, match="deleted"):
            await store.revoked(CHAIN)
    finally:
        await store.close()


async def test_sqlite_a_restored_older_database_is_read_afresh(tmp_path: Path) -> None:
    """A reopened connection starts a new data_version series: answers kept before are dropped."""
    db = tmp_path / "state.db"
    store = open_store(f"sqlite:///{db}")
    try:
        await store.revoke("planner-jti")
        assert await store.revoked(CHAIN) == "planner-jti"
        other = open_store(f"sqlite:///{tmp_path / 'fresh.db'}")
        await other.close()
        _delete(db, "-wal", "-shm")
        shutil.copyfile(tmp_path / "fresh.db", tmp_path / "swap.db")
        os.replace(tmp_path / "swap.db", db)  # a database without the revocation takes the path's place
        assert await store.revoked(CHAIN) is None
    finally:
        await store.close()


async def test_redis_refuses_instead_of_a_kept_answer_when_the_server_is_gone(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, server = own_redis
    store = open_store(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await store.ping()
                break
            except StateError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert await store.revoked(CHAIN) is None
        assert await store.revoked(CHAIN) is None  # kept
        server.terminate()
        await asyncio.to_thread(server.wait, 10)
        with pytest.raises(StateError, match="is unavailable"):
            await store.revocation_signal()
        with pytest.raises(StateError, match="is unavailable"):
            await store.revoked(CHAIN)
    finally:
        await store.close()


# --------------------------------------------------------------------------- the cache itself


def test_the_cache_never_keeps_an_answer_under_a_signal_it_was_not_read_with() -> None:
    cache = RevocationCache()
    key = ("a", "b")
    assert cache.lookup(1, key) is None
    cache.keep(1, key, None)
    assert cache.lookup(1, key) == (None,)
    assert cache.lookup(2, key) is None  # moved: everything dropped
    cache.keep(1, key, None)  # read under the old signal: not kept
    assert cache.lookup(2, key) is None
    cache.keep(2, key, "b")
    assert cache.lookup(2, key) == ("b",)


def test_the_cache_stays_bounded() -> None:
    cache = RevocationCache()
    cache.lookup(0, ())
    for i in range(RevocationCache.MAX + 10):
        cache.keep(0, (str(i),), None)
    assert len(cache._answers) <= RevocationCache.MAX
