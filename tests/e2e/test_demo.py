"""The README's first command: ``mcp-guard demo`` against the real filesystem server."""

from __future__ import annotations

import subprocess

import pytest
from fixtures import mcp_guard_bin, requires_tools, tools_env

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-filesystem")]


def test_demo_shows_discovery_allowed_refused_approved_hidden_and_audit() -> None:
    done = subprocess.run([str(mcp_guard_bin()), "demo"], capture_output=True, text=True, timeout=120, env=tools_env())
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "1. Discovery: the agent can see 8 tools" in out
    assert "-> # Demo workspace" in out
    assert "mcp-guard denied fs/read_text_file: args.path must be under" in out
    assert "Tool:      fs/write_file" in out and "-> Successfully wrote to" in out
    assert "Unknown tool: fs_move_file" in out
    assert "6 hash-chained records" in out  # the hidden call is audited too (decision unknown)
    assert "mcp-guard denied fs/write_file: The file name came from content someone outside wrote (policy demo-flow); " \
           "this session holds `untrusted` since fs/read_text_file, audit record " in out
    assert "Traceback" not in done.stderr
