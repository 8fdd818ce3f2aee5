"""An upstream's request deadlines on one shared timer: each request still times out at its own
deadline, whatever order the requests came in and whichever ended first."""

from __future__ import annotations

import asyncio

import pytest

from mcp_guard.upstreams.deadlines import Deadlines


def test_a_shorter_deadline_added_later_fires_first_and_the_timer_moves_on_to_the_next() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        slow, quick = loop.create_future(), loop.create_future()
        deadlines.add(loop, 1, slow, 30.0)
        deadlines.add(loop, 2, quick, 0.01)  # earlier than the armed timer: re-armed for it
        with pytest.raises(TimeoutError):
            await quick
        deadlines.discard(2)
        assert not slow.done()
        assert deadlines._timer is not None and deadlines._at == pytest.approx(loop.time() + 30.0, abs=5.0)
        deadlines.discard(1)
        slow.cancel()

    asyncio.run(scenario())


def test_a_request_answered_in_time_is_never_failed_when_the_timer_left_armed_fires() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        answered = loop.create_future()
        deadlines.add(loop, 1, answered, 0.01)
        answered.set_result({"id": 1})
        deadlines.discard(1)
        late = loop.create_future()
        deadlines.add(loop, 2, late, 0.02)  # the armed timer is earlier: it stays
        await asyncio.sleep(0.05)
        assert answered.result() == {"id": 1}
        assert isinstance(late.exception(), TimeoutError)

    asyncio.run(scenario())


def test_only_the_overdue_requests_fail_and_a_done_one_is_left_as_it_is() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        futures = {key: loop.create_future() for key in range(6)}
        for key, fut in futures.items():
            deadlines.add(loop, key, fut, 0.01 if key % 2 else 30.0)
        futures[1].set_result("answered just in time")  # done but not yet discarded when the timer fires
        await asyncio.sleep(0.05)
        assert futures[1].result() == "answered just in time"
        assert all(isinstance(futures[k].exception(), TimeoutError) for k in (3, 5))
        assert not any(futures[k].done() for k in (0, 2, 4))
        for key in futures:
            deadlines.discard(key)
            futures[key].cancel()

    asyncio.run(scenario())
