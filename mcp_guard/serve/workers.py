"""``mcp-guard serve --workers N``: N forked guard processes listening on one port.

Each worker binds its own ``SO_REUSEPORT`` socket, so the kernel spreads incoming connections over
them; each is a full guard (its own upstream connections, sessions and caches) and they agree
through the configured state store (budgets, rate limits, revocations, the approval queue) and the
shared audit log. The parent only supervises: a signal stops every worker, and a worker that dies
stops the rest, so the service never runs on fewer workers than asked for without anyone noticing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType

from mcp_guard.errors import GuardError

log = logging.getLogger("mcp_guard.workers")

_PR_SET_PDEATHSIG = 1


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket other ``SO_REUSEPORT`` sockets (of the same user) may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a reply written in two parts waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise GuardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send SIGTERM to this worker when the supervisor dies (even by
    SIGKILL), so no orphaned worker keeps serving on the port; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(count: int, work: Callable[[], None]) -> int:
    """Fork ``count`` processes running ``work``; returns 0 after a requested stop, 1 if a worker died."""
    alive: set[int] = set()
    stopping = False

    def stop_all() -> None:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        stop_all()

    parent = os.getpid()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            code = 1
            try:
                _die_with_parent(parent)
                work()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except GuardError as exc:
                log.error("worker %d: %s", os.getpid(), exc)
            except BaseException:  # process edge: the forked worker reports any failure, then exits
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        alive.add(pid)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("serving with %d workers: %s", count, " ".join(map(str, sorted(alive))))
    code = 0
    while alive:
        pid, status = os.wait()
        alive.discard(pid)
        if not stopping:
            log.error("worker %d exited (status %d); stopping the other workers", pid, os.waitstatus_to_exitcode(status))
            stopping, code = True, 1
            stop_all()
    return code
