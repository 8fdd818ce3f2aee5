"""The quickstart and the host files in examples/ start without the network: a locally installed
server, a host-like short PATH, npm and HTTP pointed at nothing; the host entry launched exactly as
written (after the README's sed step), from another directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from fixtures import ROOT, concrete_examples, requires_tools, stdio_session, tool_path

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-filesystem")]

HOST_FILES = ["claude_desktop_config.json", ".mcp.json", ".cursor/mcp.json", ".vscode/mcp.json"]


def offline_host_env(home: Path) -> dict[str, str]:
    """A GUI host's environment with every download path closed: npx/npm offline, proxies dead."""
    dead = "http://127.0.0.1:9"
    return {"PATH": os.pathsep.join(["/usr/bin", "/bin"]), "HOME": str(home), "USER": "alice",
            "npm_config_offline": "true", "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}


def test_nothing_in_examples_downloads_at_start() -> None:
    for f in (ROOT / "examples").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".yaml"):
            assert "npx" not in f.read_text(encoding="utf-8"), f


@pytest.mark.parametrize("host_file", HOST_FILES)
async def test_the_host_entry_starts_the_quickstart_offline(tmp_path: Path, host_file: str) -> None:
    examples = concrete_examples(tmp_path)
    servers = json.loads((examples / host_file).read_text())
    entry = (servers.get("mcpServers") or servers["servers"])["guarded-fs"]
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    async with stdio_session([entry["command"], *entry["args"]], env=offline_host_env(elsewhere), cwd=elsewhere) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"fs_read_text_file", "fs_write_file", "fs_list_allowed_directories"} <= names
        assert "fs_move_file" not in names
        result = await client.call_tool("fs_read_text_file", {"path": "hello.md"})
        assert not result.is_error, result
        refused = await client.call_tool("fs_read_text_file", {"path": "../guard.yaml"})
        assert refused.is_error
    assert (examples / "quickstart" / "audit.jsonl").exists()


@requires_tools("mcp-inspector")
def test_the_inspector_with_the_example_mcp_json(tmp_path: Path) -> None:
    """The MCP Inspector, given examples/.mcp.json as written (after the sed step), lists and calls
    within its own start-up timeout: nothing is downloaded when the guard starts."""
    examples = concrete_examples(tmp_path)
    env = {**offline_host_env(tmp_path), "PATH": os.pathsep.join([str(tool_path("node").parent), "/usr/bin", "/bin"])}
    base = [str(tool_path("mcp-inspector")), "--cli", "-q", "--format", "json", "--config", str(examples / ".mcp.json"),
            "--server", "guarded-fs"]
    listed = subprocess.run([*base, "--method", "tools/list"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {t["name"] for t in json.loads(listed.stdout.strip().splitlines()[0])["result"]["tools"]}
    assert "fs_read_text_file" in names and "fs_move_file" not in names
    called = subprocess.run([*base, "--method", "tools/call", "--tool-name", "fs_read_text_file", "--tool-arg", "path=hello.md"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert called.returncode == 0, called.stderr + called.stdout
