"""A hostile filesystem under the sqlite store: deleted, replaced and read-only files.

The store must refuse (StateError, one logged sentence) instead of quietly reading a deleted file,
must never die of SIGBUS, and the CLI must not create a fresh database in place of one a running
guard still holds."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import chattr

from mcp_guard.errors import StateError
from mcp_guard.state import Counter, open_store
from mcp_guard.state.sqlite import SqliteStore

HERE = Path(__file__).parent
MCP_GUARD = str(Path(sys.executable).with_name("mcp-guard"))


def _files(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]


def _delete(db: Path, *suffixes: str) -> None:
    """Remove the database and its -wal/-shm files (or only the files with ``suffixes``)."""
    for f in _files(db):
        if not suffixes or any(str(f).endswith(x) for x in suffixes):
            f.unlink(missing_ok=True)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _state_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mcp_guard.state"]


class Holder:
    """A second process holding the database open the way a running guard does."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "stateproc.py"), "hold", url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.ask_line() == "ready", self.stderr()

    def ask_line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def revoked(self, jti: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(jti + "\n")
        self.proc.stdin.flush()
        line = self.ask_line()
        assert line, f"the holder died ({self.proc.wait()}): {self.stderr()}"
        return line

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def holder_factory() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.stop()


async def test_a_deleted_database_refuses_every_operation_and_says_so_once(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(f"sqlite:///{db}")
    try:
        await store.revoke("jti-1")
        assert await store.revoked(["jti-1"]) == "jti-1"
        _delete(db)
        caplog.set_level(logging.WARNING, logger="mcp_guard.state")
        for _ in range(3):
            with pytest.raises(StateError, match="was deleted while mcp-guard was using it"):
                await store.revoked(["jti-1"])
        with pytest.raises(StateError, match="deleted"):
            await store.consume([Counter("session:s:k", 10)])
        with pytest.raises(StateError, match="deleted"):
            await store.approval_create({"tool": "t"})
        logs = _state_logs(caplog)
        assert len(logs) == 1 and "was deleted" in logs[0], logs
    finally:
        await store.close()


async def test_a_restored_database_is_used_again(db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(f"sqlite:///{db}")
    try:
        await store.revoke("jti-1")
        backup = tmp_path / "backup.db"
        with sqlite3.connect(backup) as copy:
            store._db.backup(copy)  # what an operator's backup tool would have made
        _delete(db)
        caplog.set_level(logging.WARNING, logger="mcp_guard.state")
        with pytest.raises(StateError):
            await store.revoked(["jti-1"])
        shutil.move(backup, db)
        assert await store.revoked(["jti-1"]) == "jti-1"
        assert await store.consume([Counter("k", 1)]) is None
        logs = _state_logs(caplog)
        assert any("usable again" in m for m in logs), logs
    finally:
        await store.close()


async def test_a_replacement_that_is_not_a_state_database_is_refused(db: Path) -> None:
    store = SqliteStore(f"sqlite:///{db}")
    try:
        await store.revoke("jti-1")
        _delete(db)
        _write(db, b"not a database at all, just some bytes" * 200)
        with pytest.raises(StateError, match="replaced by a file mcp-guard cannot use"):
            await store.revoked(["jti-1"])
        _delete(db)
        sqlite3.connect(db).execute("CREATE TABLE other (x)").connection.commit()  # a valid but foreign database
        with pytest.raises(StateError, match="not an mcp-guard state database"):
            await store.revoked(["jti-1"])
    finally:
        await store.close()


async def test_a_replaced_wal_file_makes_the_store_reopen(db: Path) -> None:
    store = SqliteStore(f"sqlite:///{db}")
    try:
        await store.revoke("jti-1")
        _delete(db, "-wal", "-shm")
        store._next_check = 0.0  # the -wal/-shm files are looked at every 0.1 s; now
        # without the check it would go on writing to a -wal nobody else sees; reopening folds the
        # deleted -wal (still open) into the database, so nothing written before is lost either
        await store.revoke("jti-2")
        other = SqliteStore(f"sqlite:///{db}")
        try:
            assert await other.revoked(["jti-2"]) == "jti-2"
            assert await other.revoked(["jti-1"]) == "jti-1"
        finally:
            await other.close()
    finally:
        await store.close()


def test_the_cli_will_not_create_a_fresh_database_under_a_running_guard(db: Path, holder_factory: list[Holder]) -> None:
    url = f"sqlite:///{db}"
    holder = Holder(url)
    holder_factory.append(holder)
    assert (Path(f"{db}.guards") / str(holder.proc.pid)).exists()
    assert holder.revoked("jti-1") == "None"
    _delete(db)
    done = subprocess.run([MCP_GUARD, "approvals", "list", "--state", url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert f"mcp-guard process {holder.proc.pid} still uses the deleted one" in done.stderr
    assert "Traceback" not in done.stderr
    assert not db.exists()
    with pytest.raises(StateError, match="missing or not initialised"):
        open_store(url)
    _write(db, b"")  # an empty file is no better than none
    with pytest.raises(StateError, match="missing or not initialised"):
        open_store(url)
    assert holder.revoked("jti-1").startswith("StateError: the state database")
    holder.stop()  # a dead guard's record is stale: a fresh database may now be made
    store = open_store(url)
    assert not (Path(f"{db}.guards") / str(holder.proc.pid)).exists()
    import asyncio

    asyncio.run(store.close())


def test_a_guard_closing_its_store_removes_its_record(db: Path) -> None:
    import asyncio

    store = open_store(f"sqlite:///{db}", holder=True)
    record = Path(f"{db}.guards") / str(os.getpid())
    assert record.read_text().split() == [str(db.stat().st_dev), str(db.stat().st_ino)]
    asyncio.run(store.close())
    assert not record.exists()


@pytest.mark.parametrize("suffix", ["-shm", "-wal", ""])
def test_an_immutable_file_refuses_instead_of_killing_the_process(db: Path, holder_factory: list[Holder], suffix: str) -> None:
    """``chattr +i`` on the -shm file SQLite has mapped used to end the guard with SIGBUS."""
    url = f"sqlite:///{db}"
    holder = Holder(url)
    holder_factory.append(holder)
    assert holder.revoked("jti-1") == "None"
    target = Path(f"{db}{suffix}")
    if not chattr("+i", target):
        pytest.skip("chattr +i is not possible here (needs root and a filesystem with the immutable flag)")
    try:
        import time

        time.sleep(0.3)  # past the next full check (every 0.1 s), which sees a read-only -wal or database
        answers = [holder.revoked("jti-1") for _ in range(3)]
        assert holder.proc.poll() is None, f"the holder died ({holder.proc.returncode}): {holder.stderr()}"
        assert all(a.startswith("StateError: ") and "is not writable" in a for a in answers), answers
    finally:
        chattr("-i", target)
    assert holder.revoked("jti-1") == "None"  # writable again: used again
