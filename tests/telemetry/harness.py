"""Shared pieces of the telemetry tests: the tiny upstream, guard.yaml, a raw JSON-RPC host, and the
in-memory telemetry the scope and record tests drive.

The raw host speaks newline-delimited JSON-RPC to a real ``mcp-guard run`` so a test controls
``params._meta`` exactly (an SDK client would add or replace trace context itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from fixtures import mcp_guard_bin, write_guard_config
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_guard import telemetry
from mcp_guard.telemetry.hooks import Telemetry
from mcp_guard.telemetry.settings import Settings

META_UPSTREAM = Path(__file__).resolve().parent / "meta_upstream.py"
HOST_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{HOST_TRACE_ID}-{HOST_SPAN_ID}-01"
IDENTITY = {"user": "alice@example.com", "agent": "support-bot", "purpose": "ticket-triage"}
POLICIES: list[dict[str, Any]] = [
    {
        "id": "notes-policy",
        "rules": [
            {"id": "echo", "effect": "allow", "tools": ["notes/echo"]},
            {"id": "tmp-only", "effect": "allow", "tools": ["notes/write_note"], "when": {"args.path": {"under": "/tmp"}}},
            {"id": "greet", "effect": "allow", "prompts": ["notes/greet"]},
        ],
    }
]
SECRET = "s3cret-argument-value"


def guard_yaml(directory: Path, record: Path, **extra: Any) -> Path:
    upstream = {"command": sys.executable, "args": [str(META_UPSTREAM)], "env": {"RECORD_FILE": str(record)}}
    extra.setdefault("identity", IDENTITY)
    return Path(write_guard_config(directory, {"notes": upstream}, POLICIES, **extra))


def received(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any OTEL_* the developer may have set, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


class RawHost:
    """A JSON-RPC peer over a guard's stdin/stdout; answers are matched by id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiting.pop(msg.get("id"), None) if "method" not in msg else None
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def send(self, message: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = dict(params)
        await self.send(msg)
        return await asyncio.wait_for(fut, 30)

    async def initialize(self) -> dict[str, Any]:
        answer = await self.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw-host", "version": "1"}},
        )
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    async def call(self, tool: str, arguments: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"name": tool, "arguments": dict(arguments)}
        if meta is not None:
            params["_meta"] = dict(meta)
        return await self.request("tools/call", params)


@contextlib.asynccontextmanager
async def raw_guard(config: Path, env: Mapping[str, str], stderr: Path) -> AsyncIterator[RawHost]:
    """``mcp-guard run --config CONFIG`` with a raw host; closes stdin and waits for a clean exit."""
    with open(stderr, "ab") as err:  # noqa: ASYNC230 - the child needs a real fd
        proc = await asyncio.create_subprocess_exec(
            str(mcp_guard_bin()), "run", "--config", str(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            env=dict(env), cwd=str(config.parent),
        )
    host = RawHost(proc)
    try:
        yield host
    finally:
        if proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        host._reader.cancel()


class StubUpstream:
    """What the telemetry hooks read of an upstream: its name, protocol version and config."""

    name = "notes"
    protocol_version = "2025-11-25"
    config = object()


@contextlib.contextmanager
def in_memory_telemetry(settings: Settings) -> Iterator[tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader]]:
    """The guard's telemetry started with in-memory span and metric sinks, shut down afterwards."""
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    hooks = telemetry.start(settings, span_exporter=spans, metric_reader=metrics)
    assert isinstance(hooks, Telemetry)
    yield hooks, spans, metrics
    hooks.shutdown()
