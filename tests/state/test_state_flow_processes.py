"""Session flow state shared across real OS processes and kept across a restart, and the sqlite
schema upgrade that added it."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from mcp_guard.state import Counter, open_store
from mcp_guard.state.base import FlowPiece, LabelOrigin

HERE = Path(__file__).parent
MIB = 1 << 20


def _spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "stateproc.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def _result(proc: subprocess.Popen[str]) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return int(out.strip().splitlines()[-1])


def test_two_processes_adding_to_one_session_agree(shared_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    tries = 150
    procs = [_spawn("flow", shared_url, "shared", name, str(tries), str(go)) for name in ("alpha", "beta")]
    go.touch()
    seen = [_result(p) for p in procs]

    async def check() -> None:
        store = open_store(shared_url)
        try:
            flow = await store.flow_get("shared")
            assert sorted(p.text for p in flow.pieces) == sorted(
                f"{name} piece {i}" for name in ("alpha", "beta") for i in range(tries)
            )
            assert set(flow.labels) == {f"{name}-{i}" for name in ("alpha", "beta") for i in range(5)}
            for label in ("alpha-0", "beta-0"):  # the first origin of each label was kept
                assert flow.labels[label].record == 0
            assert max(seen) == 2 * tries  # whoever finished last saw both processes' pieces
        finally:
            await store.close()

    asyncio.run(check())


def test_a_reopened_store_forgets_nothing(shared_url: str) -> None:
    """A restarted guard (a new process, a new connection) finds the session's labels and content."""
    origin = LabelOrigin("private", "fs/read_text_file", 17)
    piece = FlowPiece(frozenset({"private"}), "the salary list")

    async def before() -> int:
        store = open_store(shared_url)
        try:
            return (await store.flow_add("session-1", [origin], [piece], MIB)).version
        finally:
            await store.close()

    async def after(version: int) -> None:
        store = open_store(shared_url)
        try:
            flow = await store.flow_get("session-1")
            assert flow.labels == {"private": origin} and flow.pieces == (piece,) and flow.version == version
        finally:
            await store.close()

    version = asyncio.run(before())
    asyncio.run(after(version))


def test_sqlite_schema_2_database_is_upgraded_in_place_with_its_data(tmp_path: Path) -> None:
    """A database written before flow state existed keeps its data and gains the flow tables."""
    db = tmp_path / "state.db"

    async def seed() -> None:
        store = open_store(f"sqlite:///{db}")
        await store.consume([Counter("kept", 2)])
        await store.value_set("binding", "0badc0de", time.time() + 60)
        await store.close()

    asyncio.run(seed())
    with sqlite3.connect(db) as raw:  # what a schema-2 database looks like
        for table in ("flow_scopes", "flow_labels", "flow_pieces"):
            raw.execute(f"DROP TABLE {table}")
        raw.execute("PRAGMA user_version = 2")

    async def reopen() -> None:
        store = open_store(f"sqlite:///{db}")
        try:
            assert await store.consume([Counter("kept", 2)]) is None
            assert await store.consume([Counter("kept", 2)]) == "kept"  # the old count survived
            assert await store.value_get("binding") == "0badc0de"
            flow = await store.flow_add("s", [LabelOrigin("private", "fs/read", 1)], [], MIB)
            assert set(flow.labels) == {"private"}
        finally:
            await store.close()

    asyncio.run(reopen())
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
