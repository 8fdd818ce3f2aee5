"""``redis://host:port/db``: for several guard replicas.  Each read-modify-write is one Lua script,
which Redis runs atomically; keys live under the ``mcp-guard:`` prefix and expire by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    ABANDONED,
    APPROVAL_POLL,
    APPROVAL_RETENTION,
    APPROVED,
    EXPIRED,
    PENDING,
    RATE_WINDOW,
    REJECTED,
    Counter,
    approval_record,
    merge_counters,
    new_approval_id,
    normalise_approval_id,
)

PREFIX = "mcp-guard:"
_COUNTER, _VALUE, _RATE, _REVOKED, _APPROVAL, _APPROVALS = (
    PREFIX + "c:",
    PREFIX + "v:",
    PREFIX + "r:",
    PREFIX + "revoked",
    PREFIX + "a:",
    PREFIX + "approvals",
)

# KEYS: counters; ARGV: limit, expires_at_ms ('' = never) per key.  Returns 0 or the 1-based exhausted index.
_CONSUME = """
for i, key in ipairs(KEYS) do
  local v = tonumber(redis.call('GET', key) or '0')
  if v >= tonumber(ARGV[2 * i - 1]) then return i end
end
for i, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if ARGV[2 * i] ~= '' then redis.call('PEXPIREAT', key, ARGV[2 * i]) end
end
return 0
"""

# KEYS: the window's sorted set; ARGV: now ('' = the server's clock), limit, unique member, window seconds.
_RATE_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return 1
"""

# KEYS: approval hash, index; ARGV: id, record json, created, expires_at ('' = none), ttl seconds.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', 'pending', 'expires_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: approval hash; ARGV: status, approver, reason, now.  1 = answered, 0 = not pending / unknown.
_RESOLVE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
local e = redis.call('HGET', KEYS[1], 'expires_at')
if e and e ~= '' and tonumber(ARGV[4]) >= tonumber(e) then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'resolved', ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'approver', ARGV[2], 'reason', ARGV[3], 'resolved', ARGV[4])
return 1
"""


POOL_SIZE = 100  # connections per guard process
POOL_WAIT = 5.0  # seconds a call waits for one of them before it is refused (fail closed)


class RedisStore:
    """Shares budgets, rates, revocations and approvals between guard replicas."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            # a burst of calls beyond the pool waits for a free connection (up to POOL_WAIT) instead
            # of being refused at once with "Too many connections", as the default pool does
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=POOL_SIZE, timeout=POOL_WAIT, socket_connect_timeout=3.0, socket_timeout=5.0,
                decode_responses=True,
            )
            self._r: aioredis.Redis = aioredis.Redis.from_pool(pool)
        except (ValueError, RedisError) as exc:
            raise StateError(f"the state URL {url} is not a valid Redis URL: {exc}") from None
        self._consume = self._r.register_script(_CONSUME)
        self._rate = self._r.register_script(_RATE_LUA)
        self._create = self._r.register_script(_CREATE)
        self._resolve = self._r.register_script(_RESOLVE)

    def _error(self, exc: Exception) -> StateError:
        return StateError(f"the state store {self.url} is unavailable: {exc}")

    async def consume(self, counters: Sequence[Counter]) -> str | None:
        merged = merge_counters(counters)
        if not merged:
            return None
        argv: list[str] = []
        for c in merged:
            argv += [str(c.limit), "" if c.expires_at is None else str(int(c.expires_at * 1000))]
        try:
            index = int(await self._consume(keys=[_COUNTER + c.key for c in merged], args=argv))
        except RedisError as exc:
            raise self._error(exc) from None
        return merged[index - 1].key if index else None

    async def rate(self, key: str, per_minute: int, now: float | None = None) -> bool:
        args = ["" if now is None else repr(now), str(per_minute), uuid.uuid4().hex, repr(RATE_WINDOW)]
        try:
            return bool(int(await self._rate(keys=[_RATE + key], args=args)))
        except RedisError as exc:
            raise self._error(exc) from None

    async def value_set(self, key: str, value: str, expires_at: float) -> None:
        try:
            await self._r.set(_VALUE + key, value, pxat=max(int(expires_at * 1000), 1))
        except RedisError as exc:
            raise self._error(exc) from None

    async def value_get(self, key: str) -> str | None:
        try:
            found = await self._r.get(_VALUE + key)
        except RedisError as exc:
            raise self._error(exc) from None
        return None if found is None else str(found)

    async def revoke(self, jti: str, reason: str | None = None) -> None:
        try:
            await self._r.hsetnx(_REVOKED, jti, orjson.dumps({"reason": reason, "revoked_at": time.time()}))
        except RedisError as exc:
            raise self._error(exc) from None

    async def revoked(self, jtis: Sequence[str]) -> str | None:
        if not jtis:
            return None
        try:
            found = await self._r.hmget(_REVOKED, list(jtis))
        except RedisError as exc:
            raise self._error(exc) from None
        return next((j for j, v in zip(jtis, found, strict=True) if v is not None), None)

    async def approval_create(self, record: Mapping[str, Any]) -> str:
        now = time.time()
        for _ in range(32):
            approval_id = new_approval_id()
            stored = approval_record(record, approval_id, now)
            try:
                blob = orjson.dumps(stored).decode()
            except TypeError as exc:
                raise StateError(f"the approval request cannot be stored: {exc}") from None
            expires = stored.get("expires_at")
            args: list[str] = [
                approval_id,
                blob,
                repr(float(stored["created"])),
                repr(float(expires)) if isinstance(expires, int | float) else "",
                str(int(APPROVAL_RETENTION)),
            ]
            try:
                if int(await self._create(keys=[_APPROVAL + approval_id, _APPROVALS], args=args)):
                    return approval_id
            except RedisError as exc:
                raise self._error(exc) from None
        raise StateError(f"the state store {self.url} has no free approval id")

    async def _get(self, approval_id: str) -> dict[str, Any] | None:
        key = _APPROVAL + approval_id
        try:
            fields = await self._r.hgetall(key)
        except RedisError as exc:
            raise self._error(exc) from None
        if not fields:
            return None
        f = {str(k): str(v) for k, v in fields.items()}
        status = f.get("status", PENDING)
        expires = f.get("expires_at") or ""
        now = time.time()
        if status == PENDING and expires and now >= float(expires):
            try:
                await self._resolve(keys=[key], args=[EXPIRED, "", "", repr(now)])
                return await self._get(approval_id)
            except RedisError as exc:
                raise self._error(exc) from None
        record: dict[str, Any] = orjson.loads(f["record"])
        record["status"] = status
        if status != PENDING:
            record.update(
                resolved=float(f["resolved"]) if f.get("resolved") else None,
                approver=f.get("approver") or None,
                reason=f.get("reason") or None,
            )
        return record

    async def approval_get(self, approval_id: str) -> dict[str, Any] | None:
        return await self._get(normalise_approval_id(approval_id))

    async def approval_resolve(
        self, approval_id: str, approved: bool, approver: str, reason: str | None = None
    ) -> bool:
        return await self._settle(approval_id, APPROVED if approved else REJECTED, approver, reason)

    async def approval_abandon(self, approval_id: str, reason: str) -> bool:
        return await self._settle(approval_id, ABANDONED, "mcp-guard", reason)

    async def _settle(self, approval_id: str, status: str, approver: str, reason: str | None) -> bool:
        key = _APPROVAL + normalise_approval_id(approval_id)
        args = [status, approver, reason or "", repr(time.time())]
        try:
            return bool(int(await self._resolve(keys=[key], args=args)))
        except RedisError as exc:
            raise self._error(exc) from None

    async def approval_list(self, pending_only: bool = True) -> list[dict[str, Any]]:
        try:
            ids = [str(i) for i in await self._r.zrange(_APPROVALS, 0, -1)]
        except RedisError as exc:
            raise self._error(exc) from None
        out: list[dict[str, Any]] = []
        gone: list[str] = []
        for approval_id in ids:
            record = await self._get(approval_id)
            if record is None:
                gone.append(approval_id)
            elif not pending_only or record["status"] == PENDING:
                out.append(record)
        if gone:
            try:
                await self._r.zrem(_APPROVALS, *gone)
            except RedisError as exc:
                raise self._error(exc) from None
        return out

    async def approval_wait(self, approval_id: str, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        approval_id = normalise_approval_id(approval_id)
        deadline = time.monotonic() + timeout
        while True:
            record = await self._get(approval_id)
            if record is None or record["status"] == EXPIRED:
                return None
            if record["status"] != PENDING:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                # The same script that answers also expires, so an answer and a timeout never both win.
                try:
                    expired = await self._r.eval(
                        "if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end "
                        "redis.call('HSET', KEYS[1], 'status', 'expired', 'resolved', ARGV[1]) return 1",
                        1,
                        _APPROVAL + approval_id,
                        repr(time.time()),
                    )
                except RedisError as exc:
                    raise self._error(exc) from None
                if int(expired):
                    return None
                continue
            await asyncio.sleep(min(APPROVAL_POLL, left))

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except RedisError as exc:
            raise self._error(exc) from None

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self._r.aclose()
