"""``memory://``: one process only (tests, single-shot runs); nothing survives the process."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mcp_guard.state.base import (
    ABANDONED,
    APPROVAL_POLL,
    APPROVED,
    EMPTY_FLOW,
    EXPIRED,
    FLOW_TTL,
    PENDING,
    RATE_WINDOW,
    REJECTED,
    Counter,
    FlowPiece,
    LabelOrigin,
    SessionFlow,
    approval_record,
    fresh_version,
    is_overdue,
    merge_counters,
    new_approval_id,
    normalise_approval_id,
    plan_flow_add,
)


class _Flow:
    """One session's flow state with the digests of its pieces and its last use."""

    __slots__ = ("digests", "flow", "touched")

    def __init__(self, flow: SessionFlow, digests: set[str], touched: float) -> None:
        self.flow, self.digests, self.touched = flow, digests, touched


class MemoryStore:
    """Plain dictionaries; atomic because nothing awaits inside an operation."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._counters: dict[str, tuple[int, float | None]] = {}
        self._rates: dict[str, deque[float]] = {}
        self._revoked: dict[str, str | None] = {}
        self._approvals: dict[str, dict[str, Any]] = {}
        self._values: dict[str, tuple[str, float]] = {}
        self._flows: dict[str, _Flow] = {}
        self.flow_ttl = FLOW_TTL

    async def consume(self, counters: Sequence[Counter]) -> str | None:
        now = time.time()
        counters = merge_counters(counters)
        values: list[int] = []
        for c in counters:
            value, expires = self._counters.get(c.key, (0, None))
            if expires is not None and now >= expires:
                value = 0
            if value >= c.limit:
                return c.key
            values.append(value)
        for c, value in zip(counters, values, strict=True):
            self._counters[c.key] = (value + 1, c.expires_at)
        return None

    async def rate(self, key: str, per_minute: int, now: float | None = None) -> bool:
        t = time.time() if now is None else now
        window = self._rates.setdefault(key, deque())
        while window and window[0] <= t - RATE_WINDOW:
            window.popleft()
        if len(window) >= per_minute:
            return False
        window.append(t)
        return True

    async def value_set(self, key: str, value: str, expires_at: float) -> None:
        if len(self._values) % 1024 == 1023:  # now and then, drop the expired ones: the dictionary stays bounded
            now = time.time()
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._values[key] = (value, expires_at)

    async def value_get(self, key: str) -> str | None:
        found = self._values.get(key)
        return found[0] if found is not None and time.time() < found[1] else None

    async def revoke(self, jti: str, reason: str | None = None) -> None:
        self._revoked.setdefault(jti, reason)

    async def revocation_signal(self) -> Hashable:
        return len(self._revoked)  # revocations are only ever added

    async def revoked(self, jtis: Sequence[str]) -> str | None:
        for jti in jtis:
            if jti in self._revoked:
                return jti
        return None

    async def approval_create(self, record: Mapping[str, Any]) -> str:
        approval_id = new_approval_id()
        while approval_id in self._approvals:
            approval_id = new_approval_id()
        self._approvals[approval_id] = approval_record(record, approval_id)
        return approval_id

    def _current(self, approval_id: str) -> dict[str, Any] | None:
        record = self._approvals.get(normalise_approval_id(approval_id))
        if record is not None and is_overdue(record, time.time()):
            record["status"] = EXPIRED
            record["resolved"] = time.time()
        return record

    async def approval_get(self, approval_id: str) -> dict[str, Any] | None:
        record = self._current(approval_id)
        return dict(record) if record is not None else None

    async def approval_resolve(
        self, approval_id: str, approved: bool, approver: str, reason: str | None = None
    ) -> bool:
        record = self._current(approval_id)
        if record is None or record["status"] != PENDING:
            return False
        record.update(status=APPROVED if approved else REJECTED, approver=approver, reason=reason, resolved=time.time())
        return True

    async def approval_abandon(self, approval_id: str, reason: str) -> bool:
        record = self._current(approval_id)
        if record is None or record["status"] != PENDING:
            return False
        record.update(status=ABANDONED, approver="mcp-guard", reason=reason, resolved=time.time())
        return True

    async def approval_list(self, pending_only: bool = True) -> list[dict[str, Any]]:
        out = [dict(r) for i in list(self._approvals) if (r := self._current(i)) is not None]
        if pending_only:
            out = [r for r in out if r["status"] == PENDING]
        return sorted(out, key=lambda r: r["created"])

    async def approval_wait(self, approval_id: str, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            record = self._current(approval_id)
            if record is None:
                return None
            if record["status"] != PENDING:
                return None if record["status"] == EXPIRED else dict(record)
            left = deadline - time.monotonic()
            if left <= 0:
                record.update(status=EXPIRED, resolved=time.time())
                return None
            await asyncio.sleep(min(APPROVAL_POLL, left))

    def _flow(self, scope: str, now: float) -> _Flow | None:
        entry = self._flows.get(scope)
        if entry is not None and entry.touched <= now - self.flow_ttl:
            del self._flows[scope]
            return None
        if entry is not None:
            entry.touched = now
        return entry

    async def flow_get(self, scope: str) -> SessionFlow:
        entry = self._flow(scope, time.time())
        return EMPTY_FLOW if entry is None else entry.flow

    async def flow_add(
        self, scope: str, origins: Sequence[LabelOrigin], pieces: Sequence[FlowPiece], max_bytes: int
    ) -> SessionFlow:
        now = time.time()
        entry = self._flow(scope, now)
        flow = EMPTY_FLOW if entry is None else entry.flow
        digests = set() if entry is None else entry.digests
        change = plan_flow_add(
            flow.labels, digests.__contains__, flow.content_bytes, flow.overflow, origins, pieces, max_bytes
        )
        if not change.changed:
            return flow
        if entry is None:
            if len(self._flows) % 1024 == 1023:  # now and then, drop the expired ones
                self._flows = {k: v for k, v in self._flows.items() if v.touched > now - self.flow_ttl}
            entry = self._flows[scope] = _Flow(flow, digests, now)
        labels = dict(flow.labels)
        labels.update((o.label, o) for o in change.origins)
        digests.update(d for d, _ in change.pieces)
        entry.flow = SessionFlow(
            labels=MappingProxyType(labels),  # shared with every caller: read-only
            pieces=flow.pieces + tuple(p for _, p in change.pieces),
            content_bytes=change.content_bytes,
            overflow=change.overflow,
            version=(flow.version if flow.version else fresh_version(now)) + 1,
        )
        return entry.flow

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
