"""The session flow-state contract (labels, kept content, overflow, version, expiry), run against
every backend: memory, sqlite and a real redis-server."""

from __future__ import annotations

import asyncio
import base64

from mcp_guard.state import StateStore, open_store
from mcp_guard.state.base import FlowPiece, LabelOrigin, piece_size

PRIVATE = LabelOrigin("private", "fs/read_text_file", 17)
UNTRUSTED = LabelOrigin("untrusted", "web/fetch", 18)
MIB = 1 << 20


def _piece(text: str, *labels: str) -> FlowPiece:
    return FlowPiece(frozenset(labels or ("private",)), text)


async def test_an_unknown_scope_is_empty(store: StateStore) -> None:
    flow = await store.flow_get("never-seen")
    assert dict(flow.labels) == {} and flow.pieces == () and not flow.overflow
    assert flow.content_bytes == 0 and flow.version == 0


async def test_labels_and_pieces_are_added_and_read_back(store: StateStore) -> None:
    salary = _piece("Alice Example earns 123,456 EUR a year")
    added = await store.flow_add("s1", [PRIVATE], [salary], MIB)
    assert dict(added.labels) == {"private": PRIVATE}
    assert added.pieces == (salary,)
    assert added.content_bytes == piece_size(salary) and not added.overflow and added.version > 0
    assert await store.flow_get("s1") == added
    assert (await store.flow_get("s2")).labels == {}  # scopes are separate


async def test_labels_only_grow_and_the_first_origin_is_kept(store: StateStore) -> None:
    await store.flow_add("s", [PRIVATE], [], MIB)
    later = LabelOrigin("private", "crm/get_customer", 40)
    flow = await store.flow_add("s", [later, UNTRUSTED], [], MIB)
    assert flow.labels == {"private": PRIVATE, "untrusted": UNTRUSTED}
    flow = await store.flow_add("s", [], [], MIB)
    assert set(flow.labels) == {"private", "untrusted"}
    # two origins for one new label in one call: the first one wins
    flow = await store.flow_add("s", [LabelOrigin("pii", "a/b", 1), LabelOrigin("pii", "c/d", 2)], [], MIB)
    assert flow.labels["pii"] == LabelOrigin("pii", "a/b", 1)


async def test_an_origin_without_an_audit_record(store: StateStore) -> None:
    origin = LabelOrigin("untrusted", "upstream web")
    flow = await store.flow_add("s", [origin], [], MIB)
    assert (await store.flow_get("s")).labels["untrusted"] == origin == flow.labels["untrusted"]


async def test_version_grows_on_every_change_and_only_then(store: StateStore) -> None:
    v0 = (await store.flow_get("s")).version
    v1 = (await store.flow_add("s", [PRIVATE], [], MIB)).version
    assert v1 > v0
    assert (await store.flow_add("s", [PRIVATE], [], MIB)).version == v1  # nothing new
    v2 = (await store.flow_add("s", [], [_piece("first piece of content")], MIB)).version
    assert v2 > v1
    assert (await store.flow_add("s", [], [_piece("first piece of content")], MIB)).version == v2  # kept once
    v3 = (await store.flow_add("s", [], [_piece("x" * 100)], 10)).version  # overflow is a change
    assert v3 > v2
    assert (await store.flow_add("s", [], [_piece("y" * 100)], 10)).version == v3  # still overflowing
    assert (await store.flow_get("s")).version == v3


async def test_nothing_to_add_to_an_unknown_scope_creates_nothing(store: StateStore) -> None:
    flow = await store.flow_add("s", [], [], MIB)
    assert flow.version == 0 and flow.labels == {}


async def test_pieces_keep_their_order_labels_and_exact_text(store: StateStore) -> None:
    texts = ["ünïcødé ﬁ text", "line\nbreaks\tand\x00nul", base64.b64encode(b"\xff" * 40).decode(), "a" * 10_000]
    pieces = [_piece(t, "private", "pii") if i % 2 else _piece(t, "untrusted") for i, t in enumerate(texts)]
    await store.flow_add("s", [], pieces[:2], MIB)
    await store.flow_add("s", [], pieces[2:], MIB)
    flow = await store.flow_get("s")
    assert flow.pieces == tuple(pieces)
    assert flow.content_bytes == sum(piece_size(p) for p in pieces)


async def test_the_same_content_read_twice_is_kept_once(store: StateStore) -> None:
    page = _piece("the same page, fetched again", "untrusted")
    await store.flow_add("s", [UNTRUSTED], [page, page], MIB)
    flow = await store.flow_add("s", [UNTRUSTED], [page], MIB)
    assert flow.pieces == (page,) and flow.content_bytes == piece_size(page)
    # the same text under other labels is other content
    other = _piece(page.text, "private")
    assert (await store.flow_add("s", [], [other], MIB)).pieces == (page, other)


async def test_content_is_bounded_and_overflow_stays(store: StateStore) -> None:
    a, b, c = _piece("a" * 40), _piece("b" * 40), _piece("c" * 10)
    flow = await store.flow_add("s", [PRIVATE], [a, b], 100)
    assert flow.pieces == (a, b) and flow.content_bytes == 80 and not flow.overflow
    flow = await store.flow_add("s", [], [_piece("d" * 21), c], 100)  # 101 > 100: overflow
    assert flow.overflow and flow.pieces == (a, b) and flow.content_bytes == 80
    flow = await store.flow_add("s", [UNTRUSTED], [c], 100)  # would fit, but the session overflowed for good
    assert flow.overflow and flow.pieces == (a, b)
    assert set(flow.labels) == {"private", "untrusted"}  # labels are still added past the bound
    assert (await store.flow_get("s")).overflow


async def test_exactly_the_bound_fits(store: StateStore) -> None:
    flow = await store.flow_add("s", [], [_piece("é" * 50)], 100)  # 100 UTF-8 bytes
    assert flow.content_bytes == 100 and not flow.overflow and len(flow.pieces) == 1


async def test_concurrent_writers_lose_nothing(store: StateStore) -> None:
    async def writer(i: int) -> None:
        await store.flow_add("s", [LabelOrigin(f"l{i % 7}", f"up/tool{i}", i)], [_piece(f"piece number {i:04d}")], MIB)

    await asyncio.gather(*(writer(i) for i in range(200)))
    flow = await store.flow_get("s")
    assert set(flow.labels) == {f"l{i}" for i in range(7)}
    assert sorted(p.text for p in flow.pieces) == [f"piece number {i:04d}" for i in range(200)]
    assert flow.content_bytes == sum(piece_size(p) for p in flow.pieces)


async def test_a_scope_unused_for_its_lifetime_is_forgotten(store: StateStore) -> None:
    store.flow_ttl = 0.6  # type: ignore[attr-defined]  # the lifetime after the last use (a day by default)
    await store.flow_add("old", [PRIVATE], [_piece("forgotten content")], MIB)
    await store.flow_add("used", [PRIVATE], [_piece("kept content")], MIB)
    for _ in range(4):  # reading counts as use
        await asyncio.sleep(0.25)
        assert "private" in (await store.flow_get("used")).labels
    assert (await store.flow_get("old")).labels == {}
    again = await store.flow_add("old", [UNTRUSTED], [], MIB)
    assert set(again.labels) == {"untrusted"} and again.pieces == ()


async def test_a_second_client_sees_every_change(store_url: str, store: StateStore) -> None:
    """Two stores on one database (two replicas on one Redis; two guards on one sqlite file)."""
    if store_url.startswith("memory://"):
        return  # one process by definition
    other = open_store(store_url)
    try:
        await store.flow_add("s", [PRIVATE], [_piece("one")], MIB)
        assert (await other.flow_get("s")).pieces == (_piece("one"),)
        await other.flow_add("s", [UNTRUSTED], [_piece("two", "untrusted")], MIB)
        flow = await store.flow_get("s")  # the first store has "one" cached: it must fetch "two"
        assert flow.pieces == (_piece("one"), _piece("two", "untrusted"))
        assert flow == await other.flow_get("s")
        await store.flow_add("s", [], [_piece("three")], MIB)
        assert [p.text for p in (await other.flow_get("s")).pieces] == ["one", "two", "three"]
    finally:
        await other.close()
