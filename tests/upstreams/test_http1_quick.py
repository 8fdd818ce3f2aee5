"""A POST sent at once without a task (``Http1Link.post_now``) against the hostile upstreams of the
framing tests: a whole small JSON answer is handed on from the connection's callback; anything else
(bytes smuggled after it, a body cut short, an error status, a stream) goes the general way, and the
connection and its slot are given back exactly once however the request ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcp_guard.upstreams.http1 import MAX_CONNECTIONS, Http1Link, LinkError, Quick
from tests.upstreams.test_http1_framing import exchange, hostile, ok

HEADERS = {"Content-Type": "application/json"}


async def quick(link: Http1Link, body: bytes, limit: int = 1 << 20) -> tuple[str, Any]:
    """("whole", body) or ("other", (status, body) read the general way, or the LinkError)."""
    done: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()

    def other(q: Quick) -> None:
        async def read() -> None:
            try:
                answer = q.exchange()
                if answer is None:
                    done.set_result(("other", None))
                    return
                done.set_result(("other", (answer.status, await answer.read(limit))))
            except LinkError as exc:
                done.set_result(("other", exc))

        asyncio.get_running_loop().create_task(read())

    sent = link.post_now(HEADERS, body, limit, lambda data: done.set_result(("whole", data)), other)
    assert sent is not None, "no idle connection to send on"
    return await asyncio.wait_for(done, 5)


def free_slots(link: Http1Link) -> int:
    return link._slots._value  # type: ignore[attr-defined, no-any-return]


async def test_only_an_idle_connection_is_used_and_a_whole_answer_comes_from_the_callback() -> None:
    async with hostile(lambda c, n, b: ok(b'{"conn":%d,"request":%d}' % (c, n))) as (link, upstream):
        assert link.post_now(HEADERS, b"{}", 100, lambda d: None, lambda q: None) is None  # nothing idle yet
        await exchange(link)
        for n in range(2, 6):
            assert await quick(link, b"{}") == ("whole", b'{"conn":1,"request":%d}' % n)
        assert upstream.connections == 1 and free_slots(link) == MAX_CONNECTIONS


@pytest.mark.parametrize("later", [False, True])
async def test_bytes_smuggled_after_a_quick_answer_never_reach_the_next_caller(later: bool) -> None:
    def answer(conn: int, number: int, body: bytes) -> bytes:
        real = ok(b'{"conn":%d,"request":%d}' % (conn, number))
        return real if later or number != 2 else real + ok(b'{"for":"someone else"}')

    async with hostile(answer) as (link, upstream):
        await exchange(link)
        kind, got = await quick(link, b'{"caller":"a"}')
        if later:  # the forged answer arrives while the connection idles in the pool
            assert (kind, got) == ("whole", b'{"conn":1,"request":2}')
            upstream.writers[0].write(ok(b'{"for":"someone else"}'))
            await asyncio.sleep(0.2)
            assert link.post_now(HEADERS, b"{}", 100, lambda d: None, lambda q: None) is None  # spoiled: not reused
        else:  # the forged tail came with it: A still gets its own answer, read the general way
            assert (kind, got) == ("other", (200, b'{"conn":1,"request":2}'))
        second = await exchange(link, b'{"caller":"b"}')
        assert second[2] == b'{"conn":2,"request":1}'  # B's own answer, on a new connection
        assert free_slots(link) == MAX_CONNECTIONS


async def test_a_body_cut_short_a_stream_an_error_status_and_a_big_answer_go_the_general_way() -> None:
    def answer(conn: int, number: int, body: bytes) -> bytes:
        if body == b"cut":
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{}"
        if body == b"sse":
            return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 10\r\n\r\ndata: x\n\n\n"
        if body == b"500":
            return b"HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        if body == b"chunked":
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        return ok(b'{"big":"' + b"x" * 200 + b'"}')

    async with hostile(answer) as (link, upstream):
        await exchange(link)
        assert await quick(link, b"sse") == ("other", (200, b"data: x\n\n\n"))
        assert await quick(link, b"500") == ("other", (500, b"{}"))
        assert await quick(link, b"chunked") == ("other", (200, b"{}"))
        kind, got = await quick(link, b"big", limit=100)  # over the limit: refused by the general reader
        assert kind == "other" and isinstance(got, LinkError) and "over the limit" in str(got)
        await exchange(link)
        writer = upstream.writers[-1]
        cut = asyncio.ensure_future(quick(link, b"cut"))
        await asyncio.sleep(0.2)
        assert not cut.done() and free_slots(link) == MAX_CONNECTIONS - 1  # held until the request ends
        writer.close()  # the upstream goes away mid-body
        kind, got = await cut
        assert kind == "other" and isinstance(got, LinkError) and "in the middle of a response" in str(got)
        assert free_slots(link) == MAX_CONNECTIONS


async def test_a_cancelled_quick_post_closes_its_connection_and_frees_its_slot() -> None:
    answered = asyncio.Event()

    def answer(conn: int, number: int, body: bytes) -> bytes:
        if body == b"hang":
            answered.set()
            return b""  # never answers
        return ok(b"{}")

    async with hostile(answer) as (link, upstream):
        await exchange(link)
        sent = link.post_now(HEADERS, b"hang", 100, lambda d: pytest.fail("answered"), lambda q: pytest.fail("handed on"))
        assert sent is not None and free_slots(link) == MAX_CONNECTIONS - 1
        await asyncio.wait_for(answered.wait(), 5)
        sent.cancel()
        sent.cancel()  # once only
        assert free_slots(link) == MAX_CONNECTIONS
        await exchange(link)
        assert upstream.connections == 2  # the cancelled one was never reused
        assert sent.exchange() is None
