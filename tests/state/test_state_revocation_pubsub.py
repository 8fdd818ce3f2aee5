"""The Redis store's revocation signal by publish/subscribe: while subscribed, a guard sees another
process's revocation without a query per call; when the subscription is down it reads the version
key on every call, so an unreachable Redis refuses the call; after a Redis restart it subscribes
again and sees the next revocation."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from fixtures.own_redis import OwnRedis, subscribed

from mcp_guard.errors import StateError
from mcp_guard.state import open_store
from mcp_guard.state.redis import RedisStore

HERE = Path(__file__).parent
CHAIN = ["root-jti", "planner-jti", "coder-jti"]


async def _commands(url: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        return int((await r.info("stats"))["total_commands_processed"])
    finally:
        await r.aclose()


async def _revoke_elsewhere(url: str, jti: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(HERE / "stateproc.py"), "revoke", url, jti,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == "revoked", err.decode()


async def _seen(store: RedisStore, jti: str, within: float) -> float:
    """Seconds until ``revoked(CHAIN)`` names ``jti``; fails after ``within``."""
    start = time.monotonic()
    while (answer := await store.revoked(CHAIN)) != jti:
        assert answer is None
        assert time.monotonic() - start < within, f"{jti} not seen within {within}s"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_another_process_revoking_is_seen_by_message_without_a_query_per_call(redis_server: OwnRedis) -> None:
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    store._watch.recheck = 3600.0  # no safety-net read during the test: what is seen came by message
    try:
        await subscribed(store, CHAIN)
        before = await _commands(redis_server.url)
        for _ in range(200):
            assert await store.revoked(CHAIN) is None
        assert await _commands(redis_server.url) - before < 10  # the INFO connection's own set-up, not 200 reads
        await _revoke_elsewhere(redis_server.url, "planner-jti")
        assert await _seen(store, "planner-jti", within=2.0) < 2.0
    finally:
        await store.close()


async def test_a_revocation_written_without_a_message_is_seen_within_the_recheck(redis_server: OwnRedis) -> None:
    """An older mcp-guard (no PUBLISH) still writes the hash and the version: the periodic read finds it."""
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    store._watch.recheck = 0.3
    try:
        await subscribed(store, CHAIN)
        r = aioredis.Redis.from_url(redis_server.url)
        try:
            await r.hset("mcp-guard:revoked", "coder-jti", '{"reason": null}')
        finally:
            await r.aclose()
        assert await _seen(store, "coder-jti", within=2.0) <= 1.5
    finally:
        await store.close()


async def test_own_revocations_are_seen_on_the_next_call(redis_server: OwnRedis) -> None:
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    store._watch.recheck = 3600.0
    try:
        await subscribed(store, CHAIN)
        await store.revoke("root-jti")
        assert await store.revoked(CHAIN) == "root-jti"  # no wait for its own message
    finally:
        await store.close()


async def test_a_redis_restart_refuses_while_down_then_subscribes_again(redis_server: OwnRedis) -> None:
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    store._watch.recheck = 3600.0
    try:
        await subscribed(store, CHAIN)
        redis_server.stop()
        deadline = time.monotonic() + 5
        while True:  # the lost subscription is noticed at once: every call reads, and is refused
            try:
                await store.revoked(CHAIN)
            except StateError as exc:
                assert "is unavailable" in str(exc)
                break
            assert time.monotonic() < deadline, "a call was answered from the kept answer with Redis down"
            await asyncio.sleep(0.01)
        assert not store._watch.live
        with pytest.raises(StateError, match="is unavailable"):
            await store.revocation_signal()
        redis_server.start()
        await subscribed(store, CHAIN)  # subscribed again (with back-off)
        await _revoke_elsewhere(redis_server.url, "coder-jti")
        assert await _seen(store, "coder-jti", within=2.0) < 2.0
    finally:
        await store.close()
