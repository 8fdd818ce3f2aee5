"""pytest fixtures over the helpers in ``tests/fixtures`` (import those directly for non-fixture use).

Where the guard runs in a test:

- ``fixtures.guarded_session(config)``: ``mcp-guard run`` in the test's event loop over the
  in-memory host pair (``fixtures/inprocess.py``), unless the test is about the guard's process
  (run arguments, its environment, its stderr): then a real process.
- ``fixtures.serving.serving_in_process(config, port)``: ``mcp-guard serve`` on a thread of the
  test process, on a loopback port, with real upstream processes; ``serving(config, port)`` is
  the real process, for tests about it (signals, drain, exit, workers, replicas, HAProxy).
- ``MCP_GUARD_TEST_PROCESSES=1`` makes both in-process forms real processes again.

Upstreams are always real processes.  A Python fixture upstream (``fixtures.PYTHON script.py``) is
started by a launcher that a pre-imported fork server (``fixtures/zygote.py``, one per test process)
turns into that script's process, saving each about a second of imports; ``MCP_GUARD_TEST_ZYGOTE=0``
makes ``PYTHON`` the plain interpreter again.  Tests that share one expensive set-up (a serve per flow-lab
set-up, the wheel build, the conformance suite, Phoenix) carry an ``xdist_group`` mark so
``--dist loadgroup`` (scripts/test) keeps them on one worker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fixtures
import pytest
from fixtures import (
    ALLOW_ALL,
    TOOLS_BIN,
    RecordFile,
    conformance_server_command,
    free_port,
    serve_http,
    tools_available,
    write_guard_config,
)
from fixtures.release import build_release, install_fresh, the_wheel
from fixtures.zygote import Zygote
from fixtures.zygote import start as start_zygote

_zygote: list[Zygote] = []


def pytest_configure(config: pytest.Config) -> None:
    """Every process that runs tests (an xdist worker, or a run without workers) gets a zygote, and
    ``fixtures.PYTHON`` and ``fixtures.GUARD`` (``mcp_guard_bin()``) become its launchers before the
    test modules are imported (``MCP_GUARD_TEST_ZYGOTE=upstreams``: only ``PYTHON``)."""
    controller = not hasattr(config, "workerinput") and config.getoption("dist", default="no") != "no"
    if controller or config.getoption("collectonly") or os.environ.get("MCP_GUARD_TEST_ZYGOTE") == "0":
        return
    upstreams_only = os.environ.get("MCP_GUARD_TEST_ZYGOTE") == "upstreams"  # the guard starts by exec (A/B)
    zygote = start_zygote(guard=None if upstreams_only else fixtures.real_mcp_guard_bin())
    if zygote is not None:
        _zygote.append(zygote)
        fixtures.PYTHON = str(zygote.launcher)
        fixtures.GUARD = zygote.guard


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the zygote; ``MCP_GUARD_TEST_ZYGOTE_LOG=FILE`` collects each one's log there (what it
    forked and declined: how many Python upstreams the run started)."""
    while _zygote:
        log = _zygote.pop().stop()
        if os.environ.get("MCP_GUARD_TEST_ZYGOTE_LOG"):
            with open(os.environ["MCP_GUARD_TEST_ZYGOTE_LOG"], "a", encoding="utf-8") as out:
                out.write(log)


@pytest.fixture
def tools_bin() -> Path:
    """``.tools/node_modules/.bin`` (Node 22 + the pinned npm MCP tools); skips when missing."""
    if not tools_available():
        pytest.skip("Node 22 missing from .tools/node_modules/.bin; run scripts/setup")
    return TOOLS_BIN


@pytest.fixture
def port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_port()


@pytest.fixture
def record_file(tmp_path: Path) -> RecordFile:
    """Where a recording upstream writes what it received: pass ``record_file.env()`` as its env."""
    return RecordFile(tmp_path / "received.jsonl")


GuardFactory = Callable[..., Path]


@pytest.fixture
def make_guard(tmp_path: Path) -> GuardFactory:
    """``make_guard(upstreams, policies=ALLOW_ALL, **top_level) -> guard.yaml path`` in tmp_path."""

    def make(upstreams: dict[str, dict[str, Any]], policies: Any = ALLOW_ALL, **extra: Any) -> Path:
        return write_guard_config(tmp_path, upstreams, policies, **extra)

    return make


@pytest.fixture
def conformance_http_url(tmp_path: Path) -> Iterator[str]:
    """The conformance fixture served over Streamable HTTP on a free port; yields its /mcp URL."""
    p = free_port()
    with serve_http(conformance_server_command("--http", "--port", str(p)), p, log=tmp_path / "fixture-http.log") as url:
        yield url


@pytest.fixture(scope="session")
def release_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built once per worker by ``python -m build`` (tests only read them)."""
    return build_release(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def release_venv(release_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the release wheel installed (tests run it from elsewhere, never change it)."""
    return install_fresh(the_wheel(release_dist), tmp_path_factory.mktemp("release") / "venv")


REDIS_SERVER = shutil.which("redis-server")


def _wait_for_redis(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a random loopback port, for the whole session."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); CI installs it")
    workdir = tmp_path_factory.mktemp("redis")
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_for_redis(port, proc):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _start_order(item: pytest.Item) -> int:
    """Slow tests first, then the other end-to-end tests, then the rest (stable within each)."""
    return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("e2e") else 2


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Make ``xdist_group`` marks group again under pytest 9.2, and start the long tests first.

    xdist (3.8) tags a grouped test by appending ``@group`` to ``item._nodeid``; pytest 9.2 derives
    ``nodeid`` from ``item._id`` instead, so the tag was lost and ``--dist loadgroup`` spread one
    expensive set-up over every worker.  After xdist has tagged the items, carry the tag into ``_id``.

    Under xdist the workers are handed tests in collection order, so a long test collected late
    ran alone at the end while the other worker idled: workers sort the slow tests to the front
    (every worker sorts alike, as xdist requires).  One process keeps the file order.
    """
    yield
    if hasattr(config, "workerinput"):
        items.sort(key=_start_order)
    try:
        from _pytest.nodeid import coerce_node_id  # pytest >= 9.2 only
    except ImportError:  # older pytest reads _nodeid itself
        return None
    for item in items:
        tagged = item.__dict__.get("_nodeid")
        if isinstance(tagged, str) and tagged != item.nodeid:
            item._id = coerce_node_id(tagged)  # type: ignore[attr-defined]
    return None
