"""End to end with a real OTLP backend: Arize Phoenix receives the guard's spans over OTLP/HTTP and
its own REST API returns the span with the principal chain and the decision."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import free_port, stop_process, wait_for_port
from harness import HOST_TRACE_ID, SECRET, TRACEPARENT, clean_env, guard_yaml, raw_guard

pytestmark = [
    pytest.mark.xdist_group("phoenix"),
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("phoenix") is None,
        reason="Arize Phoenix is not installed in this venv (pip install arize-phoenix; see docs/telemetry.md)",
    ),
]


def phoenix_command() -> list[str]:
    script = Path(sys.executable).parent / "phoenix"
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "phoenix.server.main", "serve"]


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Phoenix server on free loopback ports (HTTP + gRPC), its data in a temp dir; yields its URL."""
    work = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    env = clean_env(PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(port), PHOENIX_GRPC_PORT=str(free_port()),
                    PHOENIX_WORKING_DIR=str(work), PHOENIX_TELEMETRY_ENABLED="false")
    env.pop("PHOENIX_SQL_DATABASE_URL", None)
    with open(work / "phoenix.log", "wb") as log:
        proc = subprocess.Popen(phoenix_command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for_port(port, timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout=10)
        if os.environ.get("KEEP_PHOENIX_LOG") is None:
            shutil.rmtree(work, ignore_errors=True)


def spans_of(base: str, trace_id: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/v1/projects/default/spans?limit=1000", timeout=10) as resp:
        data = json.load(resp)["data"]
    return [s for s in data if s["context"]["trace_id"] == trace_id]


async def test_phoenix_shows_the_guarded_span_with_chain_and_decision(phoenix: str, tmp_path: Path) -> None:
    record = tmp_path / "received.jsonl"
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=phoenix, OTEL_METRICS_EXPORTER="none", OTEL_SERVICE_NAME="mcp-guard-e2e")
    async with raw_guard(guard_yaml(tmp_path, record), env, tmp_path / "guard.log") as host:
        await host.initialize()
        allowed = await host.call("notes_echo", {"text": SECRET}, {"traceparent": TRACEPARENT})
        refused = await host.call("notes_write_note", {"path": "/etc/passwd", "text": SECRET}, {"traceparent": TRACEPARENT})
    assert allowed["result"]["isError"] is False and refused["result"]["isError"] is True
    # the guard flushed on exit; Phoenix ingests asynchronously
    spans: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            spans = spans_of(phoenix, HOST_TRACE_ID)
        if len([s for s in spans if s["name"] == "run_guardrail mcp-guard"]) == 2:
            break
        await asyncio.sleep(0.5)
    names = sorted(s["name"] for s in spans)
    assert names == sorted(["tools/call notes_echo", "run_guardrail mcp-guard", "tools/call echo",
                            "tools/call notes_write_note", "run_guardrail mcp-guard"]), names
    guardrails = {s["attributes"]["mcp_guard.decision"]: s for s in spans if s["name"] == "run_guardrail mcp-guard"}
    assert set(guardrails) == {"allow", "deny"}
    for decision, span in guardrails.items():
        a = span["attributes"]
        assert a["mcp_guard.principal.chain"] == ["user:alice@example.com", "agent:support-bot"]
        assert a["enduser.id"] == "alice@example.com"
        assert a["gen_ai.agent.name"] == "support-bot"
        assert a["mcp_guard.policy.ids"] == ["notes-policy"]
        assert a["gen_ai.guardrail.verdict.type"] == decision
    server = next(s for s in spans if s["name"] == "tools/call notes_write_note")
    assert server["attributes"]["mcp_guard.decision"] == "deny"
    assert server["attributes"]["error.type"] == "tool_error"
    assert SECRET not in json.dumps(spans)
