"""Properties of the session flow state under any sequence of additions (memory and sqlite):
labels only grow and keep their first origin, kept content stays within its bound and in order,
overflow never clears, and the version grows exactly when something changed."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.state import open_store
from mcp_guard.state.base import FlowPiece, LabelOrigin, SessionFlow, piece_size

LABELS = st.sampled_from(["private", "untrusted", "pii"])
ORIGINS = st.builds(LabelOrigin, LABELS, st.sampled_from(["web/fetch", "fs/read_text_file"]), st.none() | st.integers(0, 99))
PIECES = st.builds(FlowPiece, st.frozensets(LABELS, min_size=1), st.text(max_size=12))
STEPS = st.lists(st.tuples(st.lists(ORIGINS, max_size=3), st.lists(PIECES, max_size=3)), min_size=1, max_size=8)


def _check(before: SessionFlow, after: SessionFlow, origins: list[LabelOrigin], bound: int) -> None:
    for label, origin in before.labels.items():
        assert after.labels[label] == origin  # never lost, never replaced
    assert set(after.labels) == set(before.labels) | {o.label for o in origins}
    for o in origins:  # a new label keeps the first origin given for it
        if o.label not in before.labels:
            assert after.labels[o.label] == next(x for x in origins if x.label == o.label)
    assert after.pieces[: len(before.pieces)] == before.pieces  # appended, never rewritten
    assert after.content_bytes == sum(piece_size(p) for p in after.pieces) <= bound
    assert len(set(after.pieces)) == len(after.pieces)  # the same content is kept once
    assert after.overflow or not before.overflow
    changed = (after.labels, after.pieces, after.overflow) != (before.labels, before.pieces, before.overflow)
    assert (after.version > before.version) if changed else (after.version == before.version)


async def _play(url: str, steps: list[tuple[list[LabelOrigin], list[FlowPiece]]], bound: int) -> None:
    store = open_store(url)
    try:
        before = await store.flow_get("s")
        for origins, pieces in steps:
            after = await store.flow_add("s", origins, pieces, bound)
            _check(before, after, origins, bound)
            assert await store.flow_get("s") == after
            before = after
    finally:
        await store.close()


@settings(max_examples=150, deadline=None)
@given(STEPS, st.integers(0, 40))
def test_memory_store_flow_properties(steps: list[tuple[list[LabelOrigin], list[FlowPiece]]], bound: int) -> None:
    asyncio.run(_play("memory://", steps, bound))


@settings(max_examples=40, deadline=None)
@given(STEPS, st.integers(0, 40))
def test_sqlite_store_flow_properties(steps: list[tuple[list[LabelOrigin], list[FlowPiece]]], bound: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_play(f"sqlite:///{Path(tmp) / 'state.db'}", steps, bound))
