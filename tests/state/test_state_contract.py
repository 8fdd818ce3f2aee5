"""The StateStore contract, run against every backend (memory, sqlite, a real redis-server)."""

from __future__ import annotations

import asyncio
import re
import time

from mcp_guard.state import APPROVED, EXPIRED, PENDING, REJECTED, Counter, StateStore


def _request(**extra: object) -> dict[str, object]:
    return {
        "tool": "write_file",
        "upstream": "fs",
        "principal": ["user:alice@example.com", "agent:planner", "agent:coder"],
        "purpose": "ticket-triage",
        "args_sha256": "ab" * 32,
        "args_preview": '{"path": "/srv/tickets/42.md"}',
        "session": "s1",
        **extra,
    }


# --------------------------------------------------------------------------- budgets


async def test_budget_allows_exactly_limit_calls(store: StateStore) -> None:
    budget = [Counter("session:s1:fs", 3)]
    results = [await store.consume(budget) for _ in range(5)]
    assert results == [None, None, None, "session:s1:fs", "session:s1:fs"]


async def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(store: StateStore) -> None:
    """300 calls at once (more than a replica's 100 Redis connections) are all counted, none refused."""
    budget = [Counter("grant:burst", 250)]
    results = await asyncio.gather(*(store.consume(budget) for _ in range(300)))
    assert results.count(None) == 250 and results.count("grant:burst") == 50


async def test_consume_is_all_or_nothing(store: StateStore) -> None:
    small, big = Counter("grant:child", 1), Counter("grant:parent", 3)
    assert await store.consume([big, small]) is None
    # the child is spent: the parent must not be charged for the refused call
    assert await store.consume([big, small]) == "grant:child"
    assert await store.consume([big]) is None
    assert await store.consume([big]) is None
    assert await store.consume([big]) == "grant:parent"


async def test_consume_names_the_first_exhausted_counter(store: StateStore) -> None:
    a, b = Counter("a", 1), Counter("b", 1)
    assert await store.consume([a, b]) is None
    assert await store.consume([a, b]) == "a"
    assert await store.consume([b, a]) == "b"


async def test_siblings_share_their_parents_budget(store: StateStore) -> None:
    parent = Counter("grant:root", 2)
    assert await store.consume([parent, Counter("grant:sib1", 5)]) is None
    assert await store.consume([parent, Counter("grant:sib2", 5)]) is None
    assert await store.consume([parent, Counter("grant:sib1", 5)]) == "grant:root"


async def test_repeated_key_counts_once_with_the_smallest_limit(store: StateStore) -> None:
    assert await store.consume([Counter("k", 5), Counter("k", 1)]) is None
    assert await store.consume([Counter("k", 5)]) is None  # counted once above, so 1 < 5
    assert await store.consume([Counter("k", 1)]) == "k"


async def test_zero_limit_refuses(store: StateStore) -> None:
    assert await store.consume([Counter("none", 0)]) == "none"


async def test_empty_consume_is_allowed(store: StateStore) -> None:
    assert await store.consume([]) is None


async def test_counter_starts_again_after_it_expires(store: StateStore) -> None:
    c = Counter("short", 1, expires_at=time.time() + 0.4)
    assert await store.consume([c]) is None
    assert await store.consume([c]) == "short"
    await asyncio.sleep(0.6)
    assert await store.consume([Counter("short", 1, expires_at=time.time() + 10)]) is None


# --------------------------------------------------------------------------- rate limits


async def test_rate_is_a_sliding_sixty_second_window(store: StateStore) -> None:
    t0 = 1_000_000.0
    assert [await store.rate("r", 3, now=t0 + i) for i in range(4)] == [True, True, True, False]
    assert await store.rate("r", 3, now=t0 + 59.9) is False
    assert await store.rate("r", 3, now=t0 + 60.0) is True  # the call at t0 left the window
    assert await store.rate("r", 3, now=t0 + 60.5) is False  # t0+1, t0+2, t0+60 are in it
    assert await store.rate("r", 3, now=t0 + 61.0) is True


async def test_refused_calls_are_not_counted(store: StateStore) -> None:
    t0 = 2_000_000.0
    assert await store.rate("r", 1, now=t0)
    for i in range(10):
        assert not await store.rate("r", 1, now=t0 + 1 + i)
    assert await store.rate("r", 1, now=t0 + 60)


async def test_rate_keys_are_independent(store: StateStore) -> None:
    assert await store.rate("a", 1, now=5.0)
    assert await store.rate("b", 1, now=5.0)
    assert not await store.rate("a", 1, now=6.0)


async def test_rate_uses_the_clock_when_now_is_omitted(store: StateStore) -> None:
    assert await store.rate("clock", 2)
    assert await store.rate("clock", 2)
    assert not await store.rate("clock", 2)


# --------------------------------------------------------------------------- revocations


async def test_revoked_returns_the_first_revoked_id_in_order(store: StateStore) -> None:
    assert await store.revoked(["root", "mid", "leaf"]) is None
    await store.revoke("leaf", "leaked")
    await store.revoke("mid")
    assert await store.revoked(["root", "mid", "leaf"]) == "mid"
    assert await store.revoked(["leaf"]) == "leaf"
    assert await store.revoked([]) is None
    await store.revoke("mid", "twice is fine")
    assert await store.revoked(["other"]) is None


# --------------------------------------------------------------------------- approvals


async def test_approval_lifecycle(store: StateStore) -> None:
    approval_id = await store.approval_create(_request())
    assert re.fullmatch(r"[0-9a-f]{8}", approval_id)
    record = await store.approval_get(approval_id)
    assert record is not None
    assert record["id"] == approval_id and record["status"] == PENDING
    assert record["tool"] == "write_file" and record["principal"][-1] == "agent:coder"
    assert isinstance(record["created"], float)
    assert [r["id"] for r in await store.approval_list()] == [approval_id]

    assert await store.approval_resolve(approval_id.upper(), True, "bob@host", "looks right")
    assert not await store.approval_resolve(approval_id, False, "mallory@host")  # one answer only
    record = await store.approval_get(approval_id)
    assert record is not None
    assert (record["status"], record["approver"], record["reason"]) == (APPROVED, "bob@host", "looks right")
    assert await store.approval_list() == []
    assert [r["status"] for r in await store.approval_list(pending_only=False)] == [APPROVED]


async def test_reject_and_unknown(store: StateStore) -> None:
    approval_id = await store.approval_create(_request())
    assert await store.approval_resolve(approval_id, False, "bob")
    record = await store.approval_get(approval_id)
    assert record is not None and record["status"] == REJECTED
    assert not await store.approval_resolve("deadbeef", True, "bob")
    assert await store.approval_get("deadbeef") is None
    assert await store.approval_wait("deadbeef", 0.1) is None


async def test_ids_are_distinct_and_listed_oldest_first(store: StateStore) -> None:
    ids = [await store.approval_create(_request(created=1000.0 + i)) for i in range(20)]
    assert len(set(ids)) == 20
    assert [r["id"] for r in await store.approval_list()] == ids


async def test_caller_cannot_preset_status_or_answer(store: StateStore) -> None:
    approval_id = await store.approval_create(_request(status=APPROVED, approver="self", id="00000000"))
    record = await store.approval_get(approval_id)
    assert record is not None
    assert record["status"] == PENDING and record["id"] == approval_id and "approver" not in record


async def test_wait_returns_the_answer_promptly(store: StateStore) -> None:
    approval_id = await store.approval_create(_request())

    async def answer() -> None:
        await asyncio.sleep(0.3)
        assert await store.approval_resolve(approval_id, True, "bob")

    started = time.monotonic()
    task = asyncio.create_task(answer())
    record = await store.approval_wait(approval_id, 5.0)
    await task
    assert record is not None and record["status"] == APPROVED and record["approver"] == "bob"
    assert time.monotonic() - started < 1.5


async def test_wait_times_out_and_expires_the_request(store: StateStore) -> None:
    approval_id = await store.approval_create(_request())
    started = time.monotonic()
    assert await store.approval_wait(approval_id, 0.3) is None
    assert 0.25 <= time.monotonic() - started < 1.5
    record = await store.approval_get(approval_id)
    assert record is not None and record["status"] == EXPIRED
    assert not await store.approval_resolve(approval_id, True, "late bob")
    assert await store.approval_list() == []


async def test_overdue_request_cannot_be_answered(store: StateStore) -> None:
    """``expires_at`` protects requests whose guard died while waiting."""
    approval_id = await store.approval_create(_request(expires_at=time.time() - 1))
    assert not await store.approval_resolve(approval_id, True, "bob")
    record = await store.approval_get(approval_id)
    assert record is not None and record["status"] == EXPIRED
    assert await store.approval_list() == []


async def test_ping(store: StateStore) -> None:
    await store.ping()


# --------------------------------------------------------------------------- keyed values


async def test_value_set_get_replace_and_expire(store: StateStore) -> None:
    assert await store.value_get("approval-binding:b1") is None
    await store.value_set("approval-binding:b1", "0badc0de", time.time() + 10)
    await store.value_set("approval-binding:b2", "12345678", time.time() + 0.4)  # digits stay a string
    assert await store.value_get("approval-binding:b1") == "0badc0de"
    assert await store.value_get("approval-binding:b2") == "12345678"
    await store.value_set("approval-binding:b1", "feedface", time.time() + 10)  # the newest wins
    assert await store.value_get("approval-binding:b1") == "feedface"
    await asyncio.sleep(0.6)
    assert await store.value_get("approval-binding:b2") is None  # gone with its TTL
    await store.value_set("approval-binding:b3", "deadbeef", time.time() - 1)  # already expired: never seen
    assert await store.value_get("approval-binding:b3") is None
