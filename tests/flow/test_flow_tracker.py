"""The flow step's state (proxy/flow.py) over a real in-memory store: labels only grow, a label
keeps its first origin, the grant's starting labels and endorsements reach the view, and the
content index follows what was added."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era
from mcp_guard.policy import Brought
from mcp_guard.proxy.flow import FlowTracker, scope_of, what_it_brought
from mcp_guard.state.base import FlowPiece, LabelOrigin
from mcp_guard.state.memory import MemoryStore

LABELS = st.frozensets(st.sampled_from(["private", "untrusted", "secret"]), max_size=2)
ADDS = st.lists(st.tuples(LABELS, st.text(min_size=0, max_size=30)), max_size=8)


@settings(max_examples=40, deadline=None)
@given(ADDS)
def test_labels_only_grow_and_keep_their_first_origin(adds: list[tuple[frozenset[str], str]]) -> None:
    async def run() -> None:
        tracker = FlowTracker(MemoryStore(), 1 << 20, exclusive=False)
        seen: set[str] = set()
        first: dict[str, str] = {}
        for i, (labels, text) in enumerate(adds):
            before = set((await tracker.get("session:s")).labels)
            brought = Brought(((labels, None),)) if labels else Brought()
            origins, pieces = what_it_brought(brought, {"content": [{"type": "text", "text": text}]}, f"up/tool{i}", i, frozenset(before))
            state = await tracker.add("session:s", origins, pieces)
            assert before <= set(state.labels)
            for label in labels:
                first.setdefault(label, f"up/tool{i}")
            seen |= labels
            assert set(state.labels) == seen
            assert {k: o.source for k, o in state.labels.items()} == first

    asyncio.run(run())


def test_the_view_holds_content_grant_labels_and_endorsements() -> None:
    class Chain:
        link_ids = ("root", "leaf")

        class flow:  # a stand-in for GrantChain.flow
            labels = frozenset({"private"})
            endorse = frozenset({"jane@example.com"})

    async def run() -> None:
        tracker = FlowTracker(MemoryStore(), 1 << 20, exclusive=True)
        origins, pieces = what_it_brought(Brought(((frozenset({"untrusted"}), None),)),
                                          {"content": [{"type": "text", "text": "mail jane@example.com and mallory@evil.example"}]},
                                          "mail/read", 0xABC, frozenset())
        state = await tracker.add("session:s", origins, pieces)
        view = tracker.view("session:s", state, Chain())  # type: ignore[arg-type]
        assert view.labels == {"private", "untrusted"}
        assert view.cause("untrusted") == "mail/read, audit record 000000000abc"
        assert view.carries(["mallory@evil.example"], ("untrusted",), False)
        assert not view.carries(["jane@example.com"], ("untrusted",), False)  # endorsed by the grant

    asyncio.run(run())


def test_the_view_is_reused_until_the_state_moves() -> None:
    """The view is built once per state: the next call with the same state gets it back, and a
    change (a new, versioned state) or another store read of the same version is seen at once."""

    async def run() -> None:
        store = MemoryStore()
        tracker = FlowTracker(store, 1 << 20, exclusive=False)
        first = await tracker.add("session:s", [LabelOrigin("untrusted", "web/fetch", 1)],
                                  [FlowPiece(frozenset({"untrusted"}), "a page that names mallory@evil.example")])
        view = tracker.view("session:s", first, None)
        assert tracker.view("session:s", await tracker.get("session:s"), None) is view
        assert tracker.view("session:t", first, None) is not view  # another scope: its own view
        later = await tracker.add("session:s", [LabelOrigin("private", "fs/read", 2)],
                                  [FlowPiece(frozenset({"private"}), "salary list of the whole team")])
        assert later.version != first.version
        moved = tracker.view("session:s", later, None)
        assert moved is not view and moved.labels == {"untrusted", "private"}
        assert moved.carries(["salary list of the whole team"], ("private",), False)

    asyncio.run(run())


def test_scopes() -> None:
    who = Principal("alice", ("bot",))
    assert scope_of("abc", Era.LEGACY, None, who) == "session:abc"
    assert scope_of("abc", Era.MODERN, None, who) == "principal:user:alice/agent:bot"
