"""``redis://host:port/db``: for several guard replicas.  Each read-modify-write is one Lua script,
which Redis runs atomically; keys live under the ``mcp-guard:`` prefix and expire by themselves."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Hashable, Mapping, Sequence
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
    EMPTY_FLOW,
    EXPIRED,
    FLOW_TTL,
    PENDING,
    RATE_WINDOW,
    REJECTED,
    Counter,
    FlowPiece,
    LabelOrigin,
    RevocationCache,
    SessionFlow,
    approval_record,
    fresh_version,
    merge_counters,
    new_approval_id,
    normalise_approval_id,
    piece_digest,
    piece_size,
)
from mcp_guard.state.redis_watch import CHANNEL, RevocationWatch

PREFIX = "mcp-guard:"
_FLOW, _FLOW_PIECES, _FLOW_DIGESTS = PREFIX + "f:", PREFIX + "fp:", PREFIX + "fd:"
_COUNTER, _VALUE, _RATE, _REVOKED, _APPROVAL, _APPROVALS = (
    PREFIX + "c:",
    PREFIX + "v:",
    PREFIX + "r:",
    PREFIX + "revoked",
    PREFIX + "a:",
    PREFIX + "approvals",
)

_REVOCATIONS_VERSION = PREFIX + "revoked:version"

# KEYS: the revocations hash, its version key; ARGV: jti, record, channel.  The version moves, and the
# channel hears of it, with every new revocation.
_REVOKE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', ARGV[3], redis.call('INCR', KEYS[2]))
end
return 1
"""

# KEYS: the version key, the revocations hash.  Both in one round trip: the hash's size also moves
# for a revocation written without the version (an older mcp-guard), and after a flush.
_SIGNAL = """
return {redis.call('GET', KEYS[1]) or '', redis.call('HLEN', KEYS[2])}
"""

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

# A session's flow state: KEYS[1] a hash (e epoch, v version, b bytes, o overflow, l:LABEL origin json),
# KEYS[2] the list of pieces (json), KEYS[3] the set of their digests.  Both scripts refresh the
# keys' expiry (ARGV[2] ms) and answer {hash fields, pieces from the caller's known count, that count}:
# the caller sends the epoch and count of the pieces it already has (ARGV[3], ARGV[4]).
_FLOW_ANSWER = """
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ARGV[2]) end
local known = 0
if redis.call('HGET', h, 'e') == ARGV[3] then known = tonumber(ARGV[4]) end
return {redis.call('HGETALL', h), redis.call('LRANGE', l, known, -1), known}
"""
_FLOW_READ = """
local h, l = KEYS[1], KEYS[2]
if redis.call('EXISTS', h) == 0 then return {} end
""" + _FLOW_ANSWER

# ARGV: max bytes, ttl ms, known epoch, known count, new epoch, fresh version, origin count, then
# (label, origin json) per origin and (digest, size, piece json) per piece.
_FLOW_ADD = """
local h, l, d = KEYS[1], KEYS[2], KEYS[3]
local fresh = redis.call('EXISTS', h) == 0
if fresh then redis.call('DEL', l, d) end
local changed = false
local i = 8
for _ = 1, tonumber(ARGV[7]) do
  if redis.call('HSETNX', h, 'l:' .. ARGV[i], ARGV[i + 1]) == 1 then changed = true end
  i = i + 2
end
local bytes = tonumber(redis.call('HGET', h, 'b') or '0')
local over = redis.call('HGET', h, 'o') == '1'
local was = over
local max = tonumber(ARGV[1])
while i <= #ARGV and not over do
  if redis.call('SISMEMBER', d, ARGV[i]) == 0 then
    local size = tonumber(ARGV[i + 1])
    if bytes + size > max then
      over = true
    else
      redis.call('RPUSH', l, ARGV[i + 2])
      redis.call('SADD', d, ARGV[i])
      bytes = bytes + size
      changed = true
    end
  end
  i = i + 3
end
if over ~= was then changed = true end
if not changed then
  if fresh then return {} end
else
  if fresh then redis.call('HSET', h, 'e', ARGV[5], 'v', ARGV[6]) end
  redis.call('HINCRBY', h, 'v', 1)
  redis.call('HSET', h, 'b', bytes, 'o', over and 1 or 0)
end
""" + _FLOW_ANSWER
FLOW_CACHE = 64  # scopes whose pieces this process keeps, so a read fetches only the new ones


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
        self._revoke = self._r.register_script(_REVOKE)
        self._signal = self._r.register_script(_SIGNAL)
        self._revocations = RevocationCache()
        self._watch = RevocationWatch(url, self._r, self._version)
        self._flow_read = self._r.register_script(_FLOW_READ)
        self._flow_add = self._r.register_script(_FLOW_ADD)
        self._pieces: dict[str, tuple[str, tuple[FlowPiece, ...]]] = {}  # scope -> (epoch, pieces)
        self.flow_ttl = FLOW_TTL

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
            record = orjson.dumps({"reason": reason, "revoked_at": time.time()}).decode()
            await self._revoke(keys=[_REVOKED, _REVOCATIONS_VERSION], args=[jti, record, CHANNEL])
        except RedisError as exc:
            raise self._error(exc) from None
        self._watch.moved()

    async def revocation_signal(self) -> Hashable:
        return await self._watch.signal()

    async def _version(self) -> Hashable:
        try:
            version, size = await self._signal(keys=[_REVOCATIONS_VERSION, _REVOKED])
        except RedisError as exc:
            raise self._error(exc) from None
        return (str(version), int(size))

    async def revoked(self, jtis: Sequence[str]) -> str | None:
        if not jtis:
            return None
        key = tuple(jtis)
        signal = await self.revocation_signal()
        known = self._revocations.lookup(signal, key)
        if known is not None:
            return known[0]
        try:
            found = await self._r.hmget(_REVOKED, list(key))
        except RedisError as exc:
            raise self._error(exc) from None
        answer = next((j for j, v in zip(key, found, strict=True) if v is not None), None)
        self._revocations.keep(signal, key, answer)
        return answer

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

    # -- session flow state

    def _flow_keys(self, scope: str) -> list[str]:
        return [_FLOW + scope, _FLOW_PIECES + scope, _FLOW_DIGESTS + scope]

    def _flow_state(self, scope: str, known: tuple[str, tuple[FlowPiece, ...]], answer: list[Any]) -> SessionFlow:
        """The SessionFlow a flow script answered, given the cached pieces it was sent."""
        if not answer:
            self._pieces.pop(scope, None)
            return EMPTY_FLOW
        flat, new, count = answer
        fields = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
        epoch = fields["e"]
        prior = known[1][: int(count)] if known[0] == epoch else ()
        pieces = prior + tuple(FlowPiece(frozenset(p["l"]), p["t"]) for p in map(orjson.loads, new))
        cached = self._pieces.pop(scope, None)
        if cached is None or cached[0] != epoch or len(cached[1]) <= len(pieces):
            cached = (epoch, pieces)
        self._pieces[scope] = cached  # most recently used last
        while len(self._pieces) > FLOW_CACHE:
            del self._pieces[next(iter(self._pieces))]
        labels = {}
        for name, value in fields.items():
            if name.startswith("l:"):
                source, record = orjson.loads(value)
                labels[name[2:]] = LabelOrigin(name[2:], source, record)
        return SessionFlow(
            labels=labels, pieces=pieces, content_bytes=int(fields.get("b", 0)), overflow=fields.get("o") == "1",
            version=int(fields["v"]),
        )

    def _known(self, scope: str) -> tuple[str, tuple[FlowPiece, ...]]:
        return self._pieces.get(scope, ("", ()))

    async def flow_get(self, scope: str) -> SessionFlow:
        known = self._known(scope)
        args: list[str | int] = ["", int(self.flow_ttl * 1000), known[0], len(known[1])]
        try:
            answer = await self._flow_read(keys=self._flow_keys(scope), args=args)
        except RedisError as exc:
            raise self._error(exc) from None
        return self._flow_state(scope, known, answer)

    async def flow_add(
        self, scope: str, origins: Sequence[LabelOrigin], pieces: Sequence[FlowPiece], max_bytes: int
    ) -> SessionFlow:
        known = self._known(scope)
        args: list[str | int] = [
            max_bytes, int(self.flow_ttl * 1000), known[0], len(known[1]), secrets.token_hex(8),
            fresh_version(time.time()), len(origins),
        ]
        for o in origins:
            args += [o.label, orjson.dumps([o.source, o.record]).decode()]
        for p in pieces:
            args += [piece_digest(p), piece_size(p), orjson.dumps({"l": sorted(p.labels), "t": p.text}).decode()]
        try:
            answer = await self._flow_add(keys=self._flow_keys(scope), args=args)
        except RedisError as exc:
            raise self._error(exc) from None
        return self._flow_state(scope, known, answer)

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except RedisError as exc:
            raise self._error(exc) from None

    async def close(self) -> None:
        await self._watch.close()
        with contextlib.suppress(RedisError):
            await self._r.aclose()
