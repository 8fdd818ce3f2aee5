"""A real third-party host drives the guard: the MCP Inspector CLI (npm ``@modelcontextprotocol/inspector``),
registered the way agent hosts register servers, through an ``mcpServers`` host config file.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures import (
    RecordFile,
    guard_command,
    recording_server_command,
    requires_tools,
    stdio_upstream,
    tool_path,
    tools_env,
    write_guard_config,
)

pytestmark = [pytest.mark.e2e, requires_tools("mcp-inspector")]

POLICY = [{"id": "p", "rules": [
    {"effect": "allow", "tools": ["rec/echo"]},
    {"effect": "allow", "tools": ["rec/write_note"], "when": {"args.path": {"under": "/notes"}}},
]}]


def _inspect(host_config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [str(tool_path("mcp-inspector")), "--cli", "-q", "--format", "json", "--config", str(host_config),
         "--server", "guard", *args],
        capture_output=True, text=True, timeout=120, env=tools_env(), cwd=host_config.parent,
    )
    out = proc.stdout.strip().splitlines()
    assert out, proc.stderr
    return proc.returncode, json.loads(out[0])


def test_inspector_lists_and_calls_through_the_guard(tmp_path: Path, record_file: RecordFile) -> None:
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record_file.env())},
                                POLICY)
    argv = guard_command(config)
    host_config = tmp_path / "mcp.json"
    host_config.write_text(json.dumps({"mcpServers": {"guard": {"command": argv[0], "args": argv[1:]}}}))

    code, listed = _inspect(host_config, "--method", "tools/list")
    assert code == 0
    assert [tool["name"] for tool in listed["result"]["tools"]] == ["rec_echo", "rec_write_note"]

    code, called = _inspect(host_config, "--method", "tools/call", "--tool-name", "rec_echo",
                            "--tool-args-json", '{"text": "via inspector"}')
    assert code == 0
    assert called["result"]["content"] == [{"type": "text", "text": "via inspector"}]

    code, refused = _inspect(host_config, "--method", "tools/call", "--tool-name", "rec_write_note",
                             "--tool-args-json", '{"path": "/etc/passwd", "text": "x"}')
    assert code == 5  # the Inspector's exit code for a tool result with isError: true
    assert refused["result"]["isError"] is True
    assert refused["result"]["content"][0]["text"] == (
        "mcp-guard denied rec/write_note: args.path must be under /notes (policy p)"
    )
    assert record_file.calls() == [("echo", {"text": "via inspector"})]
