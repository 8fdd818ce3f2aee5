"""``approval_abandon``, run against every backend: a pending request nobody waits for any more
becomes ``abandoned`` and can never be approved afterwards; an answered one stays answered."""

from __future__ import annotations

from mcp_guard.state import ABANDONED, APPROVED, StateStore


def _request() -> dict[str, object]:
    return {"tool": "write_file", "upstream": "fs", "principal": ["user:alice", "agent:planner"], "session": "s1",
            "args_sha256": "ab" * 32, "args_preview": "{}", "expires_at": 4102444800.0}


async def test_an_abandoned_request_can_never_be_approved(store: StateStore) -> None:
    approval_id = await store.approval_create(_request())
    assert await store.approval_abandon(approval_id, "the guard drained")
    assert not await store.approval_resolve(approval_id, True, "late@ops")  # too late: nobody waits
    assert not await store.approval_abandon(approval_id, "twice")
    record = await store.approval_get(approval_id)
    assert record is not None
    assert (record["status"], record["approver"], record["reason"]) == (ABANDONED, "mcp-guard", "the guard drained")
    assert await store.approval_list() == []  # not pending any more
    assert [r["status"] for r in await store.approval_list(pending_only=False)] == [ABANDONED]


async def test_an_answered_request_is_not_abandoned(store: StateStore) -> None:
    approval_id = await store.approval_create(_request())
    assert await store.approval_resolve(approval_id, True, "bob")
    assert not await store.approval_abandon(approval_id, "the caller went away")
    record = await store.approval_get(approval_id)
    assert record is not None and record["status"] == APPROVED
    assert not await store.approval_abandon("deadbeef", "unknown")
