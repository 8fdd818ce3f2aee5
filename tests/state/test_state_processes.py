"""Shared stores across real OS processes: atomic budgets, revocations and approvals seen by others."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcp_guard.errors import StateError
from mcp_guard.state import APPROVED, REJECTED, Counter, open_store

HERE = Path(__file__).parent
PYTHON = sys.executable
MCP_GUARD = str(Path(sys.executable).with_name("mcp-guard"))


def _spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PYTHON, str(HERE / "stateproc.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def _result(proc: subprocess.Popen[str]) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return int(out.strip().splitlines()[-1])


def test_two_processes_never_exceed_a_budget(shared_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    limit, tries = 300, 250  # 500 attempts on a budget of 300
    procs = [_spawn("consume", shared_url, "session:shared", str(limit), str(tries), str(go)) for _ in range(2)]
    go.touch()
    allowed = [_result(p) for p in procs]
    assert sum(allowed) == limit, allowed
    assert all(a > 0 for a in allowed), f"no interleaving happened: {allowed}"

    async def check() -> None:
        store = open_store(shared_url)
        try:
            assert await store.consume([Counter("session:shared", limit)]) == "session:shared"
            # the parent was charged exactly once per allowed call
            assert await store.consume([Counter("session:shared:parent", limit + 1)]) is None
            assert await store.consume([Counter("session:shared:parent", limit + 1)]) == "session:shared:parent"
        finally:
            await store.close()

    asyncio.run(check())


def test_two_processes_share_a_rate_limit(shared_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [_spawn("rate", shared_url, "rate:shared", "150", "120", str(go)) for _ in range(2)]
    go.touch()
    assert sum(_result(p) for p in procs) == 150


async def test_revocation_is_seen_by_another_process_on_the_next_call(shared_url: str) -> None:
    store = open_store(shared_url)
    try:
        chain = ["root-jti", "planner-jti", "coder-jti"]
        assert await store.revoked(chain) is None
        proc = await asyncio.create_subprocess_exec(
            PYTHON, str(HERE / "stateproc.py"), "revoke", shared_url, "planner-jti", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and out.strip() == b"revoked"
        assert await store.revoked(chain) == "planner-jti"
    finally:
        await store.close()


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        MCP_GUARD, "approvals", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("verb", ["approve", "reject"])
async def test_cli_in_another_process_answers_a_waiting_call(shared_url: str, tmp_path: Path, verb: str) -> None:
    config = tmp_path / "guard.yaml"
    config.write_text(f"version: 1\nstate:\n  url: {shared_url}\n")
    store = open_store(shared_url)
    try:
        approval_id = await store.approval_create(
            {"tool": "write_file", "upstream": "fs", "principal": ["user:alice", "agent:bot"],
             "purpose": "triage", "args_sha256": "00" * 32, "args_preview": '{"path": "/srv/x"}'}
        )
        waiter = asyncio.create_task(store.approval_wait(approval_id, 30.0))

        code, out, err = await _cli("list", "--config", str(config))
        assert code == 0, err
        assert approval_id in out and "fs/write_file" in out and "user:alice > agent:bot" in out
        assert '"/srv/x"' in out

        code, out, err = await _cli(verb, approval_id, "--config", str(config), "--reason", "checked", "--as", "bob")
        assert code == 0, err
        assert approval_id in out
        record = await asyncio.wait_for(waiter, 5.0)  # woken by the answer, not by its 30 s bound (a process's start-up is not timed)
        assert record is not None
        assert record["status"] == (APPROVED if verb == "approve" else REJECTED)
        assert (record["approver"], record["reason"]) == ("bob", "checked")

        code, _, err = await _cli(verb, approval_id, "--config", str(config))
        assert code == 1 and "already" in err and "Traceback" not in err
        code, _, err = await _cli("approve", "ffffffff", "--config", str(config))
        assert code == 1 and "no approval request ffffffff" in err
        code, out, _ = await _cli("list", "--config", str(config))
        assert code == 0 and "no pending approval requests" in out
    finally:
        await store.close()


# --------------------------------------------------------------------------- sqlite specifics


def test_sqlite_creates_private_file_and_directories(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "state.db"

    async def go() -> None:
        store = open_store(f"sqlite:///{db}")
        await store.consume([Counter("k", 1)])
        await store.close()

    asyncio.run(go())
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_sqlite_schema_1_database_is_upgraded_in_place_with_its_data(tmp_path: Path) -> None:
    """A database written before keyed values existed keeps its counters and gains the ``kv`` table."""
    import sqlite3

    db = tmp_path / "state.db"

    async def seed() -> None:
        store = open_store(f"sqlite:///{db}")
        await store.consume([Counter("kept", 2)])
        await store.close()

    asyncio.run(seed())
    with sqlite3.connect(db) as raw:  # what a schema-1 database looks like
        for table in ("kv", "flow_scopes", "flow_labels", "flow_pieces"):
            raw.execute(f"DROP TABLE {table}")
        raw.execute("PRAGMA user_version = 1")

    async def reopen() -> None:
        store = open_store(f"sqlite:///{db}")
        assert await store.consume([Counter("kept", 2)]) is None
        assert await store.consume([Counter("kept", 2)]) == "kept"  # the old count survived
        await store.value_set("approval-binding:b", "0badc0de", time.time() + 10)
        assert await store.value_get("approval-binding:b") == "0badc0de"
        await store.close()

    asyncio.run(reopen())
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 3  # every later schema step ran too


def test_sqlite_corrupt_file_is_a_clear_state_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StateError, match="corrupt") as info:
        open_store(f"sqlite:///{db}")
    assert "\n" not in str(info.value)


def test_sqlite_unusable_path_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot create the state database"):
        open_store(f"sqlite:///{blocker / 'state.db'}")


async def test_sqlite_lock_held_too_long_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the write lock past the busy timeout: StateError, not a hang."""
    import mcp_guard.state.sqlite_db as sq

    db = tmp_path / "state.db"
    monkeypatch.setattr(sq, "BUSY_TIMEOUT", 0.3)
    store = open_store(f"sqlite:///{db}")
    holder = await asyncio.create_subprocess_exec(
        PYTHON, "-c",
        "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(30)", str(db),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and (await holder.stdout.readline()).strip() == b"locked"
        started = time.monotonic()
        with pytest.raises(StateError, match="locked by another process"):
            await store.consume([Counter("k", 5)])
        assert time.monotonic() - started < 3
        assert await store.revoked(["a"]) is None  # readers are not blocked by a writer in WAL mode
        with pytest.raises(StateError, match="locked by another process"):
            open_store(f"sqlite:///{db}")  # opening checks the schema in a write transaction
    finally:
        holder.kill()
        await holder.wait()
        await store.close()


async def _touch(url: str) -> None:
    store = open_store(url)
    await store.close()


def test_redis_unreachable_is_a_clear_state_error() -> None:
    from fixtures import free_port

    async def go() -> None:
        store = open_store(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(StateError, match="is unavailable"):
                await store.ping()
            with pytest.raises(StateError, match="is unavailable"):
                await store.consume([Counter("k", 1)])
            with pytest.raises(StateError, match="is unavailable"):
                await store.revoked(["a"])
        finally:
            await store.close()

    asyncio.run(go())


def test_unknown_scheme_is_a_state_error() -> None:
    with pytest.raises(StateError, match="unsupported state store URL"):
        open_store("postgres://localhost/x")


def test_sqlite_relative_url_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    asyncio.run(_touch("sqlite:///rel/state.db"))
    assert (tmp_path / "rel" / "state.db").exists()
    assert os.path.isabs(str(tmp_path))


def test_processes_opening_a_new_sqlite_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Several guards starting together on a fresh state.db: the WAL switch / schema creation race
    (SQLite answers "locked" at once there, without its busy handler) must never fail a start."""
    opener = (
        "import asyncio, os, sys, time\nfrom mcp_guard.state import Counter, open_store\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.0005)\n"
        "async def main():\n    s = open_store(sys.argv[1]); await s.consume([Counter('k', 9)]); await s.close()\n"
        "asyncio.run(main())\n"
    )
    for attempt in range(12):  # the race is probabilistic: ~5-10 % of simultaneous starts hit it
        url, go = f"sqlite:///{tmp_path / f'state-{attempt}.db'}", tmp_path / f"go-{attempt}"
        procs = [subprocess.Popen([PYTHON, "-c", opener, url, str(go)], stderr=subprocess.PIPE, text=True) for _ in range(3)]
        time.sleep(0.4)  # every process imported and is spinning on the go file
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
