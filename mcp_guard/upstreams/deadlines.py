"""The deadlines of an upstream's requests in flight, on one loop timer.

A timer per request (``loop.call_later``, cancelled when the answer comes) costs a timer handle
made, armed and cancelled on every call, the cancel on the answer's way to the host.  Here each
request notes its deadline; one timer is armed for the earliest and left armed when requests end
before it: when it fires it fails the requests whose deadline has passed (``TimeoutError``) and is
armed again for the next.  Every request still times out at its own deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

SLACK = 0.001  # the loop's clock and its timers count whole milliseconds: a timer may fire up to 1 ms early


class Deadlines:
    """Request key -> (deadline, the future that waits for the answer)."""

    __slots__ = ("_at", "_due", "_loop", "_timer")

    def __init__(self) -> None:
        self._due: dict[Any, tuple[float, asyncio.Future[Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the timer fires
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, loop: asyncio.AbstractEventLoop, key: Any, waiting: asyncio.Future[Any], seconds: float) -> None:
        """``waiting`` fails with ``TimeoutError`` unless it is done within ``seconds``."""
        at = loop.time() + seconds
        self._due[key] = (at, waiting)
        if self._timer is None or at < self._at or loop is not self._loop:
            self._arm(loop, at)

    def discard(self, key: Any) -> None:
        """The request ended (answered, failed or timed out): its deadline is forgotten."""
        self._due.pop(key, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._at = loop, at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time() + SLACK
        nearest: float | None = None
        for at, waiting in list(self._due.values()):
            if at <= now:
                if not waiting.done():
                    waiting.set_exception(TimeoutError())
            elif nearest is None or at < nearest:
                nearest = at
        if nearest is not None:
            self._arm(loop, nearest)
