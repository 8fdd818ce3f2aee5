"""The shared records of handshake-era sessions: what another replica needs to adopt a session,
and nothing that lets anyone else take it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mcp_guard.serve.session_records import PREFIX, SessionRecords, binding_digest
from mcp_guard.state import open_store

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {"roots": {}}, "clientInfo": {"name": "c", "version": "1"}}}


@pytest.fixture
async def records(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    yield SessionRecords(store, ttl=60)
    await store.close()


async def test_a_record_carries_the_handshake_and_only_a_digest_of_the_binding(records: SessionRecords) -> None:
    await records.save("abc", "grant:deadbeef", INIT)
    record = await records.load("abc")
    assert record is not None and record["initialize"] == INIT
    assert "deadbeef" not in str(record) and record["binding"] == binding_digest("grant:deadbeef")
    assert records.matches(record, "grant:deadbeef") and not records.matches(record, "grant:deadbeee")


async def test_forgotten_expired_unknown_and_corrupt_records_are_not_adopted(records: SessionRecords) -> None:
    await records.save("abc", "b", INIT)
    await records.forget("abc")
    assert await records.load("abc") is None
    assert await records.load("nope") is None
    await records.store.value_set(PREFIX + "bad", "{not json", time.time() + 60)
    assert await records.load("bad") is None
    await records.store.value_set(PREFIX + "odd", '{"binding": 1, "initialize": []}', time.time() + 60)
    assert await records.load("odd") is None
    short = SessionRecords(records.store, ttl=0.05)
    await short.save("brief", "b", INIT)
    await asyncio.sleep(0.1)
    assert await short.load("brief") is None


async def test_touch_refreshes_at_most_once_per_quarter_of_the_lifetime(records: SessionRecords) -> None:
    await records.save("abc", "b", INIT)
    first = records._saved["abc"]
    await records.touch("abc", "b", INIT)
    assert records._saved["abc"] == first  # fresh: no write
    records._saved["abc"] -= 16
    await records.touch("abc", "b", INIT)
    assert records._saved["abc"] > first
