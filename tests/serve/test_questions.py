"""Answers to a caller's questions across replicas, over a real Redis: an answer that lands on
another replica reaches the one that asked, once; a forged one (another session, another caller,
an id nobody asked) is refused and audited; a flood of events for unknown sessions stays bounded;
and Redis going away mid-question fails the question at once instead of leaving it waiting."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from fixtures.ops import private_redis
from fixtures.replicas import fanout_replicas
from starlette.responses import Response

from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import RELATED_REQUEST
from mcp_guard.serve.asgi import HttpGuard
from mcp_guard.serve.fanout import CHANNEL, REPLICA_CHANNEL
from mcp_guard.serve.questions import question_key
from mcp_guard.serve.reply_host import ReplyHost
from mcp_guard.serve.resource import Caller
from mcp_guard.serve.table import SessionEntry


class _Session_:
    def __init__(self, sid: str) -> None:
        self.id = f"guard-{sid}"
        self.key = f"key-{sid}"
        self.handled: list[dict[str, Any]] = []
        self.got = asyncio.Event()

    async def handle(self, message: Any) -> None:
        self.handled.append(message)
        self.got.set()

    async def wait_for(self, qid: Any, timeout: float) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """What the session got for ``qid``, waiting up to ``timeout`` for a first one."""
        async def first() -> None:
            while not [m for m in self.handled if m.get("id") == qid]:
                self.got.clear()
                await self.got.wait()
        await asyncio.wait_for(first(), timeout)
        return [m for m in self.handled if m.get("id") == qid]

    async def close(self) -> None: ...


class _Sessions:
    def __init__(self) -> None:
        self.refusals: list[tuple[str, str | None]] = []

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def new(self, *args: Any) -> Any: ...

    def refused(self, principal: Principal, method: str | None, reason: str, session: str | None = None) -> None:
        self.refusals.append((reason, session))


ALICE = Caller(Principal(user="alice@example.com", agents=("planner",)), None, "grant:alice")
MALLORY = Caller(Principal(user="mallory@example.com", agents=("planner",)), None, "grant:mallory")


def refusals(guard: HttpGuard) -> list[tuple[str, str | None]]:
    """What ``guard`` audited as refused before any session handled it."""
    assert isinstance(guard.guard, _Sessions)
    return guard.guard.refusals


def hold(guard: HttpGuard, sid: str, caller: Caller = ALICE) -> tuple[ReplyHost, _Session_]:
    """Session ``sid`` of ``caller`` held on ``guard`` (as ``_open`` makes it)."""
    host, session = ReplyHost(), _Session_(sid)
    host.session = session
    assert guard.questions is not None
    host.share = lambda qid: guard.questions.asked(sid, qid)  # type: ignore[union-attr]
    host.settle = lambda qid: guard.questions.settled(sid, qid)  # type: ignore[union-attr]
    entry = SessionEntry(f"sid:{sid}", session, host, caller.binding, caller.owner, caller.root, time.monotonic())
    guard.entries[entry.key] = entry
    guard.by_session_key[session.key] = entry
    return host, session


async def ask(host: ReplyHost, qid: int) -> Any:
    """An upstream's question put to the caller on the SSE stream of one of its requests."""
    inner, stream = host.open({"jsonrpc": "2.0", "id": f"call-{qid}", "method": "tools/call"}, True)
    token = RELATED_REQUEST.set(inner)
    try:
        await host.send({"jsonrpc": "2.0", "id": qid, "method": "sampling/createMessage", "params": {}})
    finally:
        RELATED_REQUEST.reset(token)
    return stream


async def post_answer(guard: HttpGuard, sid: str, caller: Caller, qid: Any) -> Response:
    answer = {"jsonrpc": "2.0", "id": qid, "result": {"role": "assistant", "content": {"type": "text", "text": "hi"}}}
    response = await guard._dispatch(answer, sid, caller)
    assert isinstance(response, Response)
    return response


async def test_an_answer_landing_on_another_replica_reaches_the_one_that_asked_once(redis_url: str) -> None:
    async with fanout_replicas(redis_url, sessions=_Sessions) as (a, b):
        host_a, session_a = hold(a, "s1")
        hold(b, "s1")  # B adopted the session too (round robin)
        stream = await ask(host_a, 7)
        assert stream.events.qsize() == 1  # the question went out
        landed = await post_answer(b, "s1", ALICE, 7)
        assert landed.status_code == 202, bytes(landed.body)
        assert session_a.handled[-1]["id"] == 7 and "result" in session_a.handled[-1]
        again = await post_answer(b, "s1", ALICE, 7)  # one answer per question, wherever the second lands
        assert again.status_code == 400 and b"no question of this session has this id" in bytes(again.body)
        assert [s for _, s in refusals(b)] == ["key-s1"]
        assert len([m for m in session_a.handled if m.get("id") == 7]) == 1


async def test_an_answer_taken_where_it_was_asked_can_no_longer_be_forwarded(redis_url: str) -> None:
    async with fanout_replicas(redis_url, sessions=_Sessions) as (a, b):
        host_a, _ = hold(a, "s2")
        hold(b, "s2")
        await ask(host_a, 8)
        assert (await post_answer(a, "s2", ALICE, 8)).status_code == 202
        await asyncio.sleep(0.2)  # the record is dropped in the background
        assert (await post_answer(b, "s2", ALICE, 8)).status_code == 400


async def test_an_answer_forged_for_another_sessions_question_via_another_replica_is_refused(redis_url: str) -> None:
    async with fanout_replicas(redis_url, sessions=_Sessions) as (a, b):
        host_a, session_a = hold(a, "victim")
        hold(b, "mallorys", MALLORY)
        await ask(host_a, 9)
        # mallory answers the victim's question id on her own session, on another replica
        forged = await post_answer(b, "mallorys", MALLORY, 9)
        assert forged.status_code == 400
        assert refusals(b) == [("mcp-guard refused an answer: no question of this session has this id", "key-mallorys")]
        # on the victim's session she is another caller: 403 before anything is forwarded
        hold(b, "victim")
        stolen = await post_answer(b, "victim", MALLORY, 9)
        assert stolen.status_code == 403
        # an event forged straight onto A's channel with another binding is refused by A itself
        assert a.fanout is not None and b.fanout is not None
        verdict = await b.fanout.ask(a.fanout.replica, {"event": "answer", "session": "victim", "binding": "0" * 64,
                                                        "message": {"jsonrpc": "2.0", "id": 9, "result": {}}}, 5)
        assert verdict["ok"] is False and verdict["reason"] == "this session belongs to another caller"
        assert not [m for m in session_a.handled if m.get("id") == 9]  # the question still waits for the real answer
        assert (await post_answer(b, "victim", ALICE, 9)).status_code == 202
        assert [m for m in session_a.handled if m.get("id") == 9]
        assert refusals(a) == []


async def test_a_flood_of_events_for_unknown_sessions_stays_bounded(redis_url: str) -> None:
    async with fanout_replicas(redis_url, sessions=_Sessions) as (a, b):
        r = aioredis.Redis.from_url(redis_url)
        try:
            assert a.fanout is not None
            host_a, session_a = hold(a, "real")
            hold(b, "real")
            await ask(host_a, 11)
            flood = [orjson.dumps({"event": "answer", "session": f"nobody-{i}", "binding": "x", "message": {"id": i, "result": {}},
                                   "nonce": f"{i:032x}", "reply": "f" * 32}) for i in range(3000)]
            junk = [b"not json", b"[1,2]", orjson.dumps({"event": "answer"}), orjson.dumps({"event": "verdict", "nonce": "x"})]
            shared = [orjson.dumps({"event": kind, "session": f"nobody-{i}", "replica": "x", "message": {
                "jsonrpc": "2.0", "method": "notifications/tools/list_changed"}}) for i in range(1000) for kind in ("notice", "state")]
            started = time.monotonic()
            async with r.pipeline(transaction=False) as pipe:
                for body in flood + junk:
                    pipe.publish(REPLICA_CHANNEL + a.fanout.replica, body)
                for body in shared:
                    pipe.publish(CHANNEL, body)
                await pipe.execute()
            landed = await post_answer(b, "real", ALICE, 11)  # the real answer still gets through, promptly
            assert landed.status_code == 202 and time.monotonic() - started < 60  # a bound against starvation, not a timing target
            assert [m for m in session_a.handled if m.get("id") == 11]
            assert a.questions is not None
            for _ in range(200):  # the flood drains (a loaded machine takes a while), then nothing is left running
                if a.questions._taking == 0:
                    break
                await asyncio.sleep(0.1)
            assert a.questions._taking == 0
            assert not a.fanout._waiting and not a._tasks  # no state replay started for sessions it does not hold
        finally:
            await r.aclose()


async def test_redis_going_away_mid_question_fails_it_at_once(tmp_path: Path) -> None:
    with private_redis(tmp_path) as (url, redis_proc):
        async with fanout_replicas(url, sessions=_Sessions) as (a, b):
            host_a, session_a = hold(a, "s3")
            hold(b, "s3")
            await ask(host_a, 12)
            assert await aioredis.Redis.from_url(url).exists(question_key("s3", 12))
            redis_proc.terminate()
            redis_proc.wait(10)
            failed = await session_a.wait_for(12, 10)
            assert failed and "Redis" in failed[0]["error"]["message"], session_a.handled  # the upstream hears why
            # the caller's answer now finds no way through: a clear 503, no hang
            started = time.monotonic()
            landed = await post_answer(b, "s3", ALICE, 12)
            assert landed.status_code == 503 and b"unreachable" in bytes(landed.body)
            assert time.monotonic() - started < 8
            # a new question cannot be put while the channel is down: refused at once
            await ask(host_a, 13)
            refused = [m for m in session_a.handled if m.get("id") == 13]
            assert refused and "Redis" in refused[0]["error"]["message"]
