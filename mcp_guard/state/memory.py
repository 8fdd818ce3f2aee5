"""``memory://``: one process only (tests, single-shot runs); nothing survives the process."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from mcp_guard.state.base import (
    ABANDONED,
    APPROVAL_POLL,
    APPROVED,
    EXPIRED,
    PENDING,
    RATE_WINDOW,
    REJECTED,
    Counter,
    approval_record,
    is_overdue,
    merge_counters,
    new_approval_id,
    normalise_approval_id,
)


class MemoryStore:
    """Plain dictionaries; atomic because nothing awaits inside an operation."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._counters: dict[str, tuple[int, float | None]] = {}
        self._rates: dict[str, deque[float]] = {}
        self._revoked: dict[str, str | None] = {}
        self._approvals: dict[str, dict[str, Any]] = {}
        self._values: dict[str, tuple[str, float]] = {}

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

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
