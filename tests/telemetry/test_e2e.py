"""Through a real ``mcp-guard run``: trace context reaches the upstream, a dead or slow collector
costs nothing, and the audit log survives ``kill -9`` and refuses calls it cannot record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import free_port, mcp_guard_bin
from harness import HOST_TRACE_ID, TRACEPARENT, clean_env, guard_yaml, raw_guard, received

pytestmark = pytest.mark.e2e


async def test_upstream_receives_the_hosts_trace_id(tmp_path: Path) -> None:
    record = tmp_path / "received.jsonl"
    config = guard_yaml(tmp_path, record)
    env = clean_env(OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="50")
    async with raw_guard(config, env, tmp_path / "guard.log") as host:
        await host.initialize()
        answer = await host.call("notes_echo", {"text": "hi"}, {"traceparent": TRACEPARENT, "baggage": "k=v"})
        assert answer["result"]["isError"] is False
    calls = [m for m in received(record) if m.get("method") == "tools/call"]
    assert len(calls) == 1
    meta = calls[0]["params"]["_meta"]
    version, trace_id, span_id, flags = meta["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", HOST_TRACE_ID, "01")
    assert span_id != TRACEPARENT.split("-")[2]  # the guard's CLIENT span, not the host's span
    assert "baggage" not in meta
    # console spans went to stderr (stdout carried only MCP: the raw host parsed every line)
    log = (tmp_path / "guard.log").read_text()
    assert '"name": "tools/call notes_echo"' in log
    assert span_id in log


async def test_without_telemetry_the_hosts_context_passes_through(tmp_path: Path) -> None:
    record = tmp_path / "received.jsonl"
    async with raw_guard(guard_yaml(tmp_path, record), clean_env(), tmp_path / "guard.log") as host:
        await host.initialize()
        await host.call("notes_echo", {"text": "hi"}, {"traceparent": TRACEPARENT})
    calls = [m for m in received(record) if m.get("method") == "tools/call"]
    assert calls[0]["params"]["_meta"]["traceparent"] == TRACEPARENT


# --------------------------------------------------------------------------- collector down or slow


@pytest.fixture
def silent_collector() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung collector)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


async def _interleaved_calls(tmp_path: Path, envs: dict[str, dict[str, str]], n: int = 150) -> tuple[dict[str, list[float]], dict[str, float]]:
    """One guard per environment, all running at once; ``n`` rounds of one allowed call to each
    (the order rotates), so every guard is measured under the same machine load.  Returns each
    guard's call latencies (ms) and how long it took to exit once its stdin closed (all close
    together)."""
    times: dict[str, list[float]] = {name: [] for name in envs}
    async with contextlib.AsyncExitStack() as stack:
        hosts = {}
        for name, env in envs.items():
            directory = tmp_path / name
            config = guard_yaml(directory, directory / "received.jsonl")
            hosts[name] = await stack.enter_async_context(raw_guard(config, env, directory / "guard.log"))
            await hosts[name].initialize()
        order = list(hosts)
        for i in range(n):
            for name in order[i % len(order):] + order[: i % len(order)]:
                t0 = time.perf_counter()
                answer = await hosts[name].call("notes_echo", {"text": str(i)}, {"traceparent": TRACEPARENT})
                times[name].append((time.perf_counter() - t0) * 1000)
                assert answer["result"]["isError"] is False, (name, answer)

        async def exit_time(name: str) -> float:
            proc = hosts[name].proc
            t0 = time.perf_counter()
            assert proc.stdin is not None
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 60)
            return time.perf_counter() - t0

        exits = dict(zip(order, await asyncio.gather(*(exit_time(name) for name in order)), strict=True))
    return times, exits


@pytest.mark.slow
async def test_dead_or_hung_collector_never_slows_or_fails_a_call(tmp_path: Path, silent_collector: int) -> None:
    closed = free_port()  # nothing listens here
    fast = {"OTEL_BSP_SCHEDULE_DELAY": "20", "OTEL_BSP_MAX_QUEUE_SIZE": "64", "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            "OTEL_METRIC_EXPORT_INTERVAL": "200"}
    times, exits = await _interleaved_calls(tmp_path, {
        "off": clean_env(),
        "dead": clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}", **fast),
        "hung": clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{silent_collector}", **fast),
    })
    baseline, dead, hung = (statistics.median(times[k]) for k in ("off", "dead", "hung"))
    # "normal latency": within noise of no telemetry at all, measured side by side (a call that
    # waited for an export would take the export timeout, 1 s)
    assert dead < baseline * 2 + 2, (baseline, dead)
    assert hung < baseline * 2 + 2, (baseline, hung)
    # shutting down waits at most about one export timeout per signal, never forever
    assert exits["dead"] < exits["off"] + 6 and exits["hung"] < exits["off"] + 6, exits
    log = (tmp_path / "hung" / "guard.log").read_text()
    assert "Traceback" not in log


# --------------------------------------------------------------------------- audit through the real guard


def _audit_verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(mcp_guard_bin()), "audit", "verify", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
async def test_kill_9_mid_traffic_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    config = guard_yaml(tmp_path, tmp_path / "received.jsonl", audit={"path": str(audit)})
    answered = 0
    async with raw_guard(config, clean_env(OTEL_TRACES_EXPORTER="console"), tmp_path / "guard.log") as host:
        await host.initialize()

        async def traffic(worker: int) -> None:
            nonlocal answered
            for i in range(10_000):
                tool = "notes_echo" if i % 3 else "notes_write_note"
                args = {"text": f"{worker}-{i}"} if i % 3 else {"path": f"/etc/{i}", "text": "x"}
                await host.call(tool, args)
                answered += 1

        workers = [asyncio.get_running_loop().create_task(traffic(w)) for w in range(8)]
        while answered < 300:  # noqa: ASYNC110 - polling a counter the workers bump
            await asyncio.sleep(0.01)
        host.proc.send_signal(signal.SIGKILL)
        await host.proc.wait()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert host.proc.returncode == -signal.SIGKILL
    result = _audit_verify(audit)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.endswith("}")]
    # every answered call was recorded before it was answered
    assert len(lines) >= answered, f"{answered} calls answered but only {len(lines)} audit records"
    assert {r["decision"] for r in lines} == {"allow", "deny"}
    # a restarted guard continues the same chain
    async with raw_guard(config, clean_env(), tmp_path / "guard2.log") as host:
        await host.initialize()
        await host.call("notes_echo", {"text": "after the crash"})
    result = _audit_verify(audit)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_audit_write_failure_refuses_the_call(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):  # noqa: ASYNC240
        pytest.skip("/dev/full is needed to make every audit write fail")
    record = tmp_path / "received.jsonl"
    config = guard_yaml(tmp_path, record, audit={"path": "/dev/full"})
    async with raw_guard(config, clean_env(), tmp_path / "guard.log") as host:
        await host.initialize()
        answer = await host.call("notes_echo", {"text": "must not arrive"})
    result = answer["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "audit" in text and "Traceback" not in text
    assert not [m for m in received(record) if m.get("method") == "tools/call"]
