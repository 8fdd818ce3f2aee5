"""A session's requests in flight: what a drain waits for, what it cancels, and when it stops waiting."""

from __future__ import annotations

import asyncio

from mcp_guard.proxy.inflight import Inflight

FOREVER = 3600.0  # a grace no test waits out: the drain must end for another reason


async def until(event: asyncio.Event) -> None:
    await event.wait()


async def test_a_drain_lets_a_request_finish_and_cancels_the_open_listens() -> None:
    inflight = Inflight()
    release = asyncio.Event()
    working = asyncio.create_task(until(release))
    listening = asyncio.create_task(until(asyncio.Event()))  # a listen: it never finishes on its own
    inflight.begin(1, working)
    inflight.begin("listen", listening)
    draining = asyncio.create_task(inflight.drain(FOREVER, asyncio.Event().wait(), endless={"listen"}))
    await asyncio.sleep(0)
    assert listening.cancelling() and not draining.done()
    release.set()
    await asyncio.wait_for(draining, 10)  # the request finished: nothing is left to wait for
    assert working.done() and not working.cancelled()


async def test_a_host_that_hangs_up_ends_the_drain_at_once() -> None:
    inflight = Inflight()
    stuck = asyncio.create_task(until(asyncio.Event()))
    inflight.begin(7, stuck)
    gone = asyncio.Event()
    draining = asyncio.create_task(inflight.drain(FOREVER, gone.wait()))
    await asyncio.sleep(0)
    assert not draining.done()
    gone.set()
    await asyncio.wait_for(draining, 10)  # nobody is left to answer: the stuck request is not waited for
    assert not stuck.done()
    inflight.close()  # the session ends: what still runs stops unanswered
    await asyncio.sleep(0)
    assert stuck.cancelled()


async def test_an_answered_request_is_forgotten() -> None:
    inflight = Inflight()
    task = asyncio.create_task(until(asyncio.Event()))
    inflight.begin("a", task)
    inflight.end("a")
    assert inflight.tasks == {} and inflight.where("a") is None
    await asyncio.wait_for(inflight.drain(FOREVER, asyncio.Event().wait()), 10)  # nothing pending: returns at once
    task.cancel()
