"""``mcp-guard run < requests.jsonl > answers.jsonl``: stdin and stdout may be regular files (scripted
use, replaying a session); every request read before EOF is answered, and stdout holds only JSON-RPC."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fixtures import VENV_BIN, mcp_guard_bin

pytestmark = pytest.mark.e2e


def test_requests_from_a_file_answers_to_a_file(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\npolicies:\n  - id: t\n    rules:\n      - {effect: allow, tools: [time/get_current_time]}\n")
    requests = tmp_path / "in.jsonl"
    requests.write_text(
        "\n".join(
            [
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "script", "version": "1"}}}),
                json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
                "not json",
                json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                    "name": "time_get_current_time", "arguments": {"timezone": "UTC"}}}),
            ]
        )
        + "\n"
    )
    answers = tmp_path / "out.jsonl"
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        done = subprocess.run(
            [str(mcp_guard_bin()), "run", "--policies", str(policy), "--name", "time", "--", str(VENV_BIN / "mcp-server-time")],
            stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=False, timeout=60,
        )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    by_id = {m.get("id"): m for m in lines}
    assert by_id[None]["error"]["code"] == -32700
    assert [t["name"] for t in by_id[2]["result"]["tools"]] == ["time_get_current_time"]
    assert by_id[3]["result"]["isError"] is False


def test_dev_null_for_stdin_and_stdout_ends_cleanly(tmp_path: Path) -> None:
    """``/dev/null`` is a character device epoll refuses: read and written plainly, the guard sees EOF
    and exits 0 (the standard loop raised here and uvloop aborted the process)."""
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\npolicies:\n  - id: t\n    rules:\n      - {effect: allow, tools: [time/get_current_time]}\n")
    with open("/dev/null", "rb") as stdin, open("/dev/null", "wb") as stdout:
        done = subprocess.run(
            [str(mcp_guard_bin()), "run", "--policies", str(policy), "--name", "time", "--", str(VENV_BIN / "mcp-server-time")],
            stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
