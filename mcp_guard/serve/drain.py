"""Running ``serve``'s listeners and draining them on SIGTERM (or SIGINT).

A drain, bounded by ``serve.drain_timeout``: the guard stops being ready (``GET /readyz`` 503) and
stops reloading policies; the listening socket closes (no new connections); a new request on a
connection still open is refused with 503 and ``Retry-After`` so the client or balancer goes to
another replica; what is in flight is answered; the ``GET`` streams end with an SSE ``retry:``
hint.  Past the timeout what is still running is cancelled (a queued approval nobody waits for
then ends ``abandoned``).  One log line when the drain starts, one when it ends.

The listeners are uvicorn servers whose own signal capture is turned off: uvicorn would raise the
signal again after its shutdown and so kill the process before the drain's last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import uvicorn

from mcp_guard.serve.wire import JoinedWritesProtocol

if TYPE_CHECKING:
    import socket

log = logging.getLogger("mcp_guard.serve")

RETRY_MS = 1000  # the SSE reconnection delay a drained stream tells its client


class Listener(uvicorn.Server):
    """A uvicorn server that leaves the signals to the drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listener(app: Any, host: str, port: int, drain_timeout: float) -> Listener:
    # access_log off: at log level warning its lines are never written, yet uvicorn would format
    # each request's client address and path for them; a response's head and body leave in one write (wire.py)
    return Listener(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False,
                                   http=JoinedWritesProtocol, timeout_graceful_shutdown=max(1, math.ceil(drain_timeout))))


class Drain:
    """The drain of one ``serve`` process: ``begin`` (from a signal) runs each ``on_begin`` hook
    once and asks the listeners to stop; ``draining`` is what readiness and the MCP endpoint read."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.draining = False
        self.started = 0.0
        self.on_begin: list[Callable[[], object]] = []
        self.servers: list[Listener] = []

    def begin(self, why: str = "SIGTERM") -> None:
        if self.draining:  # a second signal: stop waiting for what is in flight
            log.warning("%s again while draining: what is still in flight is cancelled now", why)
            for server in self.servers:
                server.force_exit = True
            return
        self.draining = True
        self.started = time.monotonic()
        log.info("draining on %s: no new connections, no new requests, no policy reloads; what is in flight "
                 "has up to %gs", why, self.timeout)
        for hook in self.on_begin:
            try:
                hook()
            except Exception:  # one failing hook must not keep the process from stopping
                log.exception("a drain step failed")
        for server in self.servers[:1]:  # the MCP listener first; the admin one stops after it
            server.should_exit = True

    def ended(self, what: str) -> None:
        """The drain's last line (nothing when the process stopped without one)."""
        if self.draining:
            log.info("drained in %.1fs: %s", time.monotonic() - self.started, what)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.begin, signal.Signals(sig).name)


async def run_listeners(drain: Drain, main: Listener, sockets: Sequence[socket.socket] | None,
                        admin: Listener | None) -> None:
    """Serve until a signal drains ``main``; then stop ``admin``."""
    drain.servers = [main] + ([admin] if admin is not None else [])
    drain.install(asyncio.get_running_loop())
    admin_task = asyncio.ensure_future(admin.serve()) if admin is not None else None
    try:
        await main.serve(sockets=list(sockets) if sockets else None)
    finally:
        if admin is not None and admin_task is not None:
            admin.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin_task, 5)


__all__ = ["RETRY_MS", "Drain", "Listener", "listener", "run_listeners"]
