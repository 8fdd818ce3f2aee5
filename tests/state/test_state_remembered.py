"""Approvals remembered for a session, on every backend (memory, sqlite, a real redis-server)."""

from __future__ import annotations

import json
import time

import pytest

from mcp_guard.errors import StateError
from mcp_guard.state import StateStore, open_store
from mcp_guard.state.remembered import MAX_PER_SESSION, RememberedApprovals, record_key

MEMO = ("principal-tag-alice", "fs/write_file", "ab" * 32)


async def test_a_remembered_approval_is_found_by_its_session_and_memo_only(store: StateStore) -> None:
    remembered = RememberedApprovals(store, 1800)
    assert await remembered.recall("s1", MEMO) is None
    await remembered.keep("s1", MEMO, "cli:alice")
    assert await remembered.recall("s1", MEMO) == "cli:alice"
    # another session, another principal, another target or other arguments: nothing
    assert await remembered.recall("s2", MEMO) is None
    assert await remembered.recall("s1", ("principal-tag-mallory", *MEMO[1:])) is None
    assert await remembered.recall("s1", (MEMO[0], "fs/delete_file", MEMO[2])) is None
    assert await remembered.recall("s1", (*MEMO[:2], "cd" * 32)) is None
    # the parts are not concatenated: moving a boundary names another call
    assert await remembered.recall("s1", (MEMO[0] + "fs/", "write_file", MEMO[2])) is None
    assert await remembered.recall("s", ("1" + MEMO[0], *MEMO[1:])) is None


async def test_another_instance_on_the_same_store_sees_it(store: StateStore) -> None:
    """What one replica remembered, another replica (its own reader on the same store) recalls."""
    await RememberedApprovals(store, 1800).keep("s1", MEMO, "page:alice")
    other = RememberedApprovals(store, 1800)
    assert await other.recall("s1", MEMO) == "page:alice"
    await other.keep("s1", (*MEMO[:2], "cd" * 32), "cli:bob")
    assert await RememberedApprovals(store, 1800).recall("s1", MEMO) == "page:alice"  # both kept


async def test_a_session_keeps_at_most_its_bound_the_oldest_going_first(store: StateStore) -> None:
    remembered = RememberedApprovals(store, 1800)
    for n in range(MAX_PER_SESSION + 2):
        await remembered.keep("s1", (MEMO[0], MEMO[1], f"{n:064x}"), f"cli:{n}")
    assert await remembered.recall("s1", (MEMO[0], MEMO[1], f"{0:064x}")) is None
    assert await remembered.recall("s1", (MEMO[0], MEMO[1], f"{1:064x}")) is None
    assert await remembered.recall("s1", (MEMO[0], MEMO[1], f"{2:064x}")) == "cli:2"
    last = MAX_PER_SESSION + 1
    assert await remembered.recall("s1", (MEMO[0], MEMO[1], f"{last:064x}")) == f"cli:{last}"


async def test_the_record_expires_with_the_session_and_is_kept_alive_while_used(store: StateStore) -> None:
    ttl, now = 1800.0, time.time()
    clock = [now]
    remembered = RememberedApprovals(store, ttl, lambda: clock[0])
    await remembered.keep("s1", MEMO, "cli:alice")

    async def written() -> float:
        raw = await store.value_get(record_key("s1"))
        assert raw is not None
        return float(json.loads(raw)["at"])

    clock[0] = now + ttl / 8  # used soon after: not written again (at most one write a quarter of the ttl)
    assert await remembered.recall("s1", MEMO) == "cli:alice"
    assert await written() == now
    clock[0] = now + ttl / 2  # used later: kept for another ttl from now on
    assert await remembered.recall("s1", MEMO) == "cli:alice"
    assert await written() == now + ttl / 2
    # written 1.25 ttl ago (the clock of a replica that wrote it then): the store has dropped it
    old = RememberedApprovals(store, ttl, lambda: now - ttl * 1.25 - 1)
    await old.keep("s2", MEMO, "cli:alice")
    assert await remembered.recall("s2", MEMO) is None


async def test_a_damaged_record_remembers_nothing(store: StateStore) -> None:
    remembered = RememberedApprovals(store, 1800)
    await remembered.keep("s1", MEMO, "cli:alice")
    for damaged in ("not json", "[]", '{"at": 1}', '{"at": "x", "approvals": {}}', '{"at": 1, "approvals": []}'):
        await store.value_set(record_key("s1"), damaged, time.time() + 60)
        assert await remembered.recall("s1", MEMO) is None
    await remembered.keep("s1", MEMO, "cli:alice")  # and a new answer starts a sound record
    assert await remembered.recall("s1", MEMO) == "cli:alice"


async def test_an_unreachable_store_raises_instead_of_answering() -> None:
    store = open_store("redis://127.0.0.1:1/0")  # nothing listens on port 1
    remembered = RememberedApprovals(store, 1800)
    try:
        with pytest.raises(StateError):
            await remembered.recall("s1", MEMO)
        with pytest.raises(StateError):
            await remembered.keep("s1", MEMO, "cli:alice")
    finally:
        await store.close()

