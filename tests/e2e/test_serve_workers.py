"""``mcp-guard serve --workers N``: several guard processes on one port (SO_REUSEPORT) that agree
through the shared state store, so a grant's budget holds whichever worker a call lands on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import real_mcp_guard_bin, stop_process, tools_env, wait_for_port
from fixtures.serving import ServeSetup, connect
from helpers_proxy import text

pytestmark = pytest.mark.e2e


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.add(int(name))
    return found


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[ServeSetup, subprocess.Popen[bytes]]]:
    setup = ServeSetup(tmp_path)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(real_mcp_guard_bin()), "serve", "--config", str(setup.config), "--port", str(setup.port),
                             "--workers", "2"], stdout=log, stderr=subprocess.STDOUT, env=tools_env())
    try:
        wait_for_port(setup.port, timeout=60, proc=proc)
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield setup, proc
    finally:
        stop_process(proc, timeout=15)
        log.close()


def _audit(setup: ServeSetup) -> list[dict[str, object]]:
    path = setup.record.path.parent / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _one_call(setup: ServeSetup, token: str, label: str) -> tuple[bool, str]:
    """One call from a fresh client (a new TCP connection, so the kernel picks a worker anew)."""
    async with connect(setup.url, token, "auto") as client:
        res = await client.call_tool("rec_echo", {"text": label})
        return not res.is_error, text(res)


async def test_a_grant_budget_is_shared_by_the_workers_and_both_serve(two_workers: tuple[ServeSetup, subprocess.Popen[bytes]]) -> None:
    setup, proc = two_workers
    workers = _children(proc.pid)
    assert len(workers) == 2
    limited = setup.grant("alice@example.com", "planner", ["rec/echo"], max_calls=4)
    outcomes = await asyncio.gather(*(_one_call(setup, limited, f"b{i}") for i in range(12)))
    assert sum(ok for ok, _ in outcomes) == 4, outcomes
    assert all("budget" in why for ok, why in outcomes if not ok)
    assert len(setup.record.calls()) == 4

    # both workers answer calls: each audit record names the process that decided it
    free = setup.grant("bob@example.com", "reviewer", ["rec/echo"])
    for i in range(60):
        assert (await _one_call(setup, free, f"w{i}"))[0]
        if {r["pid"] for r in _audit(setup) if r["user"] == "bob@example.com"} == workers:
            break
    assert {r["pid"] for r in _audit(setup)} == workers


def test_a_worker_that_dies_stops_the_service(two_workers: tuple[ServeSetup, subprocess.Popen[bytes]]) -> None:
    setup, proc = two_workers
    victim, other = sorted(_children(proc.pid))
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(30) == 1  # not silently running on one worker
    assert not os.path.exists(f"/proc/{other}")  # stopped and reaped before the parent exits
    assert "stopping the other workers" in (setup.record.path.parent / "serve.log").read_text()


def test_workers_do_not_outlive_a_killed_supervisor(two_workers: tuple[ServeSetup, subprocess.Popen[bytes]]) -> None:
    proc = two_workers[1]
    workers = _children(proc.pid)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_memory_state_is_refused_with_workers(tmp_path: Path) -> None:
    setup = ServeSetup(tmp_path)
    config = setup.config.read_text().replace(f"sqlite:///{tmp_path / 'state.db'}", "memory://")
    assert "memory://" in config
    setup.config.write_text(config)
    for flag in (["--workers", "2"], ["--reuse-port"]):
        done = subprocess.run([str(real_mcp_guard_bin()), "serve", "--config", str(setup.config), "--port", str(setup.port), *flag],
                              capture_output=True, text=True, timeout=30, env=tools_env())
        assert done.returncode != 0
        assert "memory:// lives in one process" in done.stderr and "Traceback" not in done.stderr
