"""What a guard process imports at start-up: only what its command and its configuration need.

Every ``mcp-guard run`` an agent host (or a test) starts pays its imports in CPU: numpy (the flow
index), the OpenTelemetry SDK and exporters, the ``mcp`` SDK (which loads its client, server and
HTTP stack whole) and the grant schemas cost about a second and a half together.  ``run`` with
telemetry off, no flow rule and a handshake-era host needs none of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import PYTHON, RECORDING_SERVER, write_guard_config

from mcp_guard.cli import MODULES, commands_of

# imported only by the command, the configuration or the request that needs them
HEAVY = ("numpy", "opentelemetry", "mcp", "mcp_types", "uvicorn", "starlette", "httpx", "jsonschema")


def _env() -> dict[str, str]:
    """This checkout's package, telemetry left off whatever the caller's environment says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def _heavy(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if m.split(".")[0] in HEAVY)


def test_every_command_is_found_in_the_module_the_table_names() -> None:
    for module in set(MODULES.values()):
        assert {c.name for c in commands_of(module)} == {n for n, m in MODULES.items() if m == module}, module


def test_the_cli_and_the_run_path_import_nothing_heavy() -> None:
    code = ("import sys, json\n"
            "import mcp_guard.cli, mcp_guard.cli.run, mcp_guard.app, mcp_guard.transports.stdio, mcp_guard.upstreams.stdio\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60, check=True)
    assert _heavy(set(json.loads(out.stdout))) == []


def _run_imports(config: Path, messages: list[dict[str, object]]) -> set[str]:
    """The modules one ``mcp-guard run`` session imported (``-X importtime``), start to exit."""
    lines = "".join(json.dumps(m) + "\n" for m in messages)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mcp_guard", "run", "--config", str(config)],
                          input=lines, env=_env(), capture_output=True, text=True, timeout=60, cwd=config.parent)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    asked = [m["id"] for m in messages if "id" in m]
    assert [a.get("id") for a in answers] == asked and all("result" in a for a in answers), (answers, done.stderr[-2000:])
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


SESSION: list[dict[str, object]] = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize",
     "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "rec_echo", "arguments": {"text": "hi"}}},
]


@pytest.mark.e2e
def test_a_run_session_with_telemetry_off_imports_nothing_heavy(tmp_path: Path) -> None:
    config = write_guard_config(tmp_path, {"rec": {"command": PYTHON, "args": [str(RECORDING_SERVER)]}})
    imported = _run_imports(config, SESSION)
    assert "mcp_guard.proxy.session" in imported  # the session really ran in this process
    assert _heavy(imported) == []


@pytest.mark.e2e
def test_what_the_configuration_asks_for_is_imported(tmp_path: Path) -> None:
    """The other side: telemetry on loads the SDK; a flow rule's content loads the index."""
    flow = {"version": 1, "labels": [{"tools": ["rec/echo"], "brings": ["untrusted"]}],
            "policies": [{"id": "flow", "rules": [
                {"effect": "allow", "tools": ["*/*"]},
                {"effect": "deny", "tools": ["rec/echo"], "when": {"args.text": {"carries": ["untrusted"]}}}]}]}
    config = write_guard_config(tmp_path, {"rec": {"command": PYTHON, "args": [str(RECORDING_SERVER)]}}, flow,
                                telemetry={"traces_exporter": "console", "metrics_exporter": "none"})
    imported = _run_imports(config, [*SESSION, {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                                "params": {"name": "rec_echo", "arguments": {"text": "again"}}}])
    assert {"opentelemetry.sdk.trace", "numpy"} <= imported
