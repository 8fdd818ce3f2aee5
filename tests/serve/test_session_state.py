"""What a caller changed about its session moves with the shared record: only answered changes
are recorded, and replaying turns another replica's guard session into what the record says."""

from __future__ import annotations

from pathlib import Path

from mcp_guard.serve.session_records import SessionRecords
from mcp_guard.serve.session_state import MAX_SUBSCRIPTIONS, REPLAY, changed, replays
from mcp_guard.state import open_store

OK = {"jsonrpc": "2.0", "id": 1, "result": {}}
REFUSED = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "denied"}}


def req(method: str, **params: str) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def test_only_answered_changes_are_recorded() -> None:
    state = changed({}, req("logging/setLevel", level="error"), OK)
    assert state == {"level": "error"}
    assert changed(state, req("logging/setLevel", level="error"), OK) is None  # nothing new
    assert changed(state, req("resources/subscribe", uri="file:///a"), REFUSED) is None  # a refused subscription
    state = changed(state, req("resources/subscribe", uri="file:///a"), OK) or {}
    state = changed(state, req("resources/subscribe", uri="file:///b"), OK) or {}
    assert state == {"level": "error", "subscriptions": ["file:///a", "file:///b"]}
    assert changed(state, req("resources/unsubscribe", uri="file:///a"), OK) == {"level": "error", "subscriptions": ["file:///b"]}
    assert changed(state, req("tools/call", name="x"), OK) is None
    assert changed(state, {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": ["error"]}, OK) is None


def test_the_subscriptions_a_record_keeps_are_bounded() -> None:
    state: dict[str, object] = {}
    for n in range(MAX_SUBSCRIPTIONS + 10):
        state = changed(state, req("resources/subscribe", uri=f"file:///{n}"), OK) or state
    assert len(state["subscriptions"]) == MAX_SUBSCRIPTIONS  # type: ignore[arg-type]


def test_replaying_brings_a_session_to_the_recorded_state() -> None:
    have = {"level": "info", "subscriptions": ["file:///a", "file:///gone"]}
    want = {"level": "error", "subscriptions": ["file:///a", "file:///new"]}
    out = replays(have, want)
    assert [(m["method"], m["params"]) for m in out] == [
        ("logging/setLevel", {"level": "error"}), ("resources/subscribe", {"uri": "file:///new"}),
        ("resources/unsubscribe", {"uri": "file:///gone"})]
    assert all(str(m["id"]).startswith(REPLAY) for m in out)  # never recorded again as the caller's own change
    assert replays(want, want) == []
    assert replays({}, {"level": 3, "subscriptions": [None, "file:///x"]}) == [  # what is not a string is skipped
        {"jsonrpc": "2.0", "id": f"{REPLAY}sub0", "method": "resources/subscribe", "params": {"uri": "file:///x"}}]


async def test_the_record_carries_the_state(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        records = SessionRecords(store, ttl=60)
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        await records.save("abc", "b", init)
        assert "state" not in (await records.load("abc") or {})
        await records.save("abc", "b", init, {"level": "error"})
        assert (await records.load("abc") or {}).get("state") == {"level": "error"}
    finally:
        await store.close()
