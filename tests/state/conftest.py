"""Fixtures for the state store tests: every backend, real ones (sqlite files, a redis-server child)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fixtures.own_redis import REDIS_SERVER, OwnRedis

from mcp_guard.state import StateStore, open_store


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'state.db'}"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store several processes share: one sqlite file, or one Redis database (flushed first)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StateStore]:
    s = open_store(store_url)
    if store_url.startswith("redis://"):
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(store_url)
        await r.flushdb()
        await r.aclose()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own, which the test may stop and restart."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    own = OwnRedis(tmp_path)
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def own_redis(redis_server: OwnRedis) -> tuple[str, subprocess.Popen[bytes]]:
    """A redis-server of this test's own, which the test may stop."""
    return redis_server.url, redis_server.server
