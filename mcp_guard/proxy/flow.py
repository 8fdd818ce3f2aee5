"""The flow step of the call pipeline: the session's labels and labelled content, read before a
decision and added to after a forwarded request's answer, before that answer reaches the host.

The state lives in the state store (``flow_get`` / ``flow_add``), so replicas agree and a restart
forgets nothing.  What is cached here is derived: the content index of a scope, extended with the
pieces added since it was built (pieces only ever grow).  In ``run`` the process is the only
writer of its scope, so the state itself is cached too and the store is only written.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mcp_guard.flow.parts import content_of
from mcp_guard.flow.view import SessionView, endorsed
from mcp_guard.jsonrpc import Era
from mcp_guard.policy import Brought
from mcp_guard.state.base import FlowPiece, LabelOrigin, SessionFlow

if TYPE_CHECKING:
    from mcp_guard.flow.index import ContentIndex
    from mcp_guard.grants import GrantChain
    from mcp_guard.identity import Principal
    from mcp_guard.state.base import StateStore

_SCOPES_MAX = 1024
EMPTY = SessionFlow(labels={})


def scope_of(session_id: str, era: Era | None, chain: GrantChain | None, principal: Principal) -> str:
    """Whose labels: the host session (``run``), the HTTP session (``serve``, handshake era: by
    its name on every replica, so each one sees them), or for stateless 2026-07-28 requests the
    grant chain's last link, else the principal."""
    if era is not Era.MODERN:
        return f"session:{session_id}"
    if chain is not None:
        return f"grant:{chain.link_ids[-1]}"
    return "principal:" + "/".join(principal.chain)


class FlowTracker:
    """Reads and records session flow state for one guard (every session shares it)."""

    def __init__(self, store: StateStore, max_bytes: int, *, exclusive: bool) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.exclusive = exclusive
        self._states: OrderedDict[str, SessionFlow] = OrderedDict()
        self._indexes: OrderedDict[str, tuple[int, ContentIndex]] = OrderedDict()
        self._views: dict[str, tuple[SessionFlow, GrantChain | None, SessionView]] = {}

    async def get(self, scope: str) -> SessionFlow:
        if self.exclusive:
            known = self._states.get(scope)
            if known is not None:
                return known
        state = await self.store.flow_get(scope)
        return self._keep(scope, state)

    def _keep(self, scope: str, state: SessionFlow) -> SessionFlow:
        if self.exclusive:
            self._states[scope] = state
            self._states.move_to_end(scope)
            if len(self._states) > _SCOPES_MAX:
                self._states.popitem(last=False)
        return state

    async def add(self, scope: str, origins: Sequence[LabelOrigin], pieces: Sequence[FlowPiece]) -> SessionFlow:
        state = await self.store.flow_add(scope, origins, pieces, self.max_bytes)
        return self._keep(scope, state)

    def view(self, scope: str, state: SessionFlow, chain: GrantChain | None) -> SessionView:
        """The decision's view: stored labels plus the grant's starting labels, the content index
        (extended incrementally), and the chain's endorsements.  Built once per state and chain: a
        state is immutable and every change gets a new ``version``, so the last view of a scope is
        reused while neither moved (a call then costs two comparisons)."""
        known = self._views.get(scope)
        if known is not None and known[1] is chain and (known[0] is state or (state.version and known[0].version == state.version)):
            return known[2]
        view = self._build_view(scope, state, chain)
        if len(self._views) >= _SCOPES_MAX:
            self._views.clear()
        self._views[scope] = (state, chain, view)
        return view

    def _build_view(self, scope: str, state: SessionFlow, chain: GrantChain | None) -> SessionView:
        labels = set(state.labels)
        origins: dict[str, tuple[str, int | None]] = {k: (o.source, o.record) for k, o in state.labels.items()}
        endorse: frozenset[str] = frozenset()
        if chain is not None:
            for label in chain.flow.labels - labels:
                origins[label] = (f"the grant chain (link {chain.link_ids[0]})", None)
            labels |= chain.flow.labels
            endorse = endorsed(tuple(chain.flow.endorse))
        return SessionView(frozenset(labels), self._index(scope, state), origins, state.overflow, endorse)

    def _index(self, scope: str, state: SessionFlow) -> ContentIndex:
        found = self._indexes.get(scope)
        # a rebuild when the state shrank never happens with an add-only store; it is there to be safe
        if found is None or found[0] > len(state.pieces):
            from mcp_guard.flow.index import ContentIndex  # (and numpy): only once a session has flow content

            found = (0, ContentIndex())
        count, index = found
        for piece in state.pieces[count:]:
            index.add(piece.labels, piece.text)
        self._indexes[scope] = (len(state.pieces), index)
        self._indexes.move_to_end(scope)
        if len(self._indexes) > _SCOPES_MAX:
            self._indexes.popitem(last=False)
        return index


def what_it_brought(brought: Brought, answer: Any, source: str, record: int | None,
                    held: frozenset[str]) -> tuple[list[LabelOrigin], list[FlowPiece]]:
    """The origins (labels not yet held) and content pieces a forwarded request's answer brings."""
    origins = [LabelOrigin(label, source, record) for label in sorted(brought.labels - held)]
    pieces: list[FlowPiece] = []
    for labels, parts in brought.entries:
        text = content_of(answer, parts)
        if text:
            pieces.append(FlowPiece(frozenset(labels), text))
    return origins, pieces


__all__ = ["EMPTY", "FlowTracker", "scope_of", "what_it_brought"]
