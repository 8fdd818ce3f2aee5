"""``mcp-guard init``: from a server command or a host's MCP file to a guard.yaml, a starting policy,
its tests and guard.lock — against real servers, then a real guarded session on what it wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures import (
    TOOLS_BIN,
    VENV_BIN,
    guarded_session,
    mcp_guard_bin,
    recording_server_command,
    requires_tools,
    stdio_session,
    tool_path,
    tools_env,
)
from jsonschema import Draft202012Validator

from mcp_guard.config import load_config
from mcp_guard.pinning import read_lock
from mcp_guard.schema import FILES

pytestmark = pytest.mark.e2e


MODELINE = re.compile(r"\A# yaml-language-server: \$schema=(\S+)\n")
ROOT = Path(__file__).resolve().parents[2]


def assert_files_name_their_schemas(out: Path) -> None:
    """Every YAML file init wrote starts with the modeline the hand-written examples carry; it
    points at the schema init wrote beside them (the one the project ships), and the file validates."""
    files = sorted([out / "guard.yaml", *(out / "policies").glob("*.yaml")])
    assert len(files) >= 3
    for path in files:
        text = path.read_text()
        found = MODELINE.match(text)
        assert found, f"{path.name} has no modeline on its first line"
        kind = "tests" if path.name.endswith(".test.yaml") else "config" if path.name == "guard.yaml" else "policy"
        schema = (path.parent / found.group(1)).resolve()
        assert schema == (out / "schemas" / FILES[kind]).resolve(), found.group(1)
        assert schema.read_text() == (ROOT / "schemas" / FILES[kind]).read_text()
        problems = [e.message for e in Draft202012Validator(json.loads(schema.read_text())).iter_errors(yaml.safe_load(text))]
        assert problems == [], f"{path.name}: {problems}"


def init(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(mcp_guard_bin()), "init", *args], cwd=cwd, env=tools_env(), capture_output=True,
                          text=True, timeout=120, check=False)


async def test_init_from_a_command_writes_a_working_guard(tmp_path: Path) -> None:
    done = init("--", "mcp-server-time", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    for f in ("guard.yaml", "guard.lock", "policies/time.yaml", "policies/time.test.yaml"):
        assert (tmp_path / f).is_file(), f
    assert "ok: 1 policy" in done.stdout and "2 passed, 0 failed" in done.stdout
    assert "next:" in done.stdout and f"--config {tmp_path / 'guard.yaml'}" in done.stdout
    assert_files_name_their_schemas(tmp_path)
    config = load_config(tmp_path / "guard.yaml")
    assert list(config.upstreams) == ["time"] and config.pinning == "enforce"
    lock = read_lock(tmp_path / "guard.lock")
    assert lock is not None and sorted(lock.pins["time"]) == ["convert_time", "get_current_time"]
    async with guarded_session(tmp_path / "guard.yaml") as client:
        assert sorted(t.name for t in (await client.list_tools()).tools) == ["time_convert_time", "time_get_current_time"]
        assert not (await client.call_tool("time_get_current_time", {"timezone": "UTC"})).is_error


@requires_tools("mcp-server-filesystem")
async def test_annotations_place_each_filesystem_tool(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    done = init("--out", "guard", "--", str(tool_path("mcp-server-filesystem")), "./ws", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "10 allowed, 3 need approval, 1 denied" in done.stdout
    policy = (tmp_path / "guard/policies/filesystem.yaml").read_text()
    assert "annotations:" not in policy.replace("# ", "")  # literal names, never an annotation selector
    tests = (tmp_path / "guard/policies/filesystem.test.yaml").read_text()
    assert tests.count("- name:") == 14
    # the server's relative argument keeps its meaning: the guard starts it where init ran
    assert load_config(tmp_path / "guard/guard.yaml").upstreams["filesystem"].cwd == str(tmp_path)
    async with guarded_session(tmp_path / "guard/guard.yaml") as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "filesystem_read_text_file" in names and "filesystem_write_file" in names
        assert "filesystem_create_directory" not in names  # neither read-only nor destructive: denied, hidden
        (tmp_path / "ws" / "a.md").write_text("hi\n")
        result = await client.call_tool("filesystem_read_text_file", {"path": str(tmp_path / "ws" / "a.md")})
        assert not result.is_error


CLAUDE_DESKTOP = {
    "globalShortcut": "Ctrl+Space",
    "mcpServers": {
        "my files": {"command": str(TOOLS_BIN / "mcp-server-filesystem"), "args": ["WS"],
                     "env": {"PATH": f"{TOOLS_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"}},
        "time": {"command": str(VENV_BIN / "mcp-server-time")},
        "legacy": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
    },
}


@requires_tools("mcp-server-filesystem")
async def test_init_from_a_claude_desktop_file_and_rewrite_it(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    host = tmp_path / "claude_desktop_config.json"
    original = json.dumps(CLAUDE_DESKTOP, indent=2).replace('"WS"', json.dumps(str(ws)))
    host.write_text(original)
    done = init("--from-host-config", str(host), "--out", "guard", "--rewrite-host-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "skipped legacy: an SSE server" in done.stderr
    assert (tmp_path / "claude_desktop_config.json.mcp-guard-backup").read_text() == original
    config = load_config(tmp_path / "guard/guard.yaml")
    assert sorted(config.upstreams) == ["my-files", "time"]
    assert (tmp_path / "guard/guard.yaml").stat().st_mode & 0o077 == 0  # it holds the servers' env
    assert_files_name_their_schemas(tmp_path / "guard")
    data = json.loads(host.read_text())
    assert data["globalShortcut"] == "Ctrl+Space"
    assert sorted(data["mcpServers"]) == ["legacy", "mcp-guard"]
    entry = data["mcpServers"]["mcp-guard"]
    assert entry["args"][-3:] == ["run", "--config", str(tmp_path / "guard/guard.yaml")]
    # launch exactly what the host will launch, from another directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with stdio_session([entry["command"], *entry["args"]], cwd=elsewhere) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"my-files_read_text_file", "time_get_current_time"} <= names
    # a second run refuses to overwrite, and never overwrites a backup
    again = init("--from-host-config", str(tmp_path / "claude_desktop_config.json.mcp-guard-backup"), "--out", "guard",
                 cwd=tmp_path)
    assert again.returncode == 1 and "already exist" in again.stderr and "--force" in again.stderr


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    (tmp_path / "guard.yaml").write_text("# mine\n")
    done = init("--", "mcp-server-time", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("guard.yaml already exist; give --force to overwrite, or --out DIR")
    assert (tmp_path / "guard.yaml").read_text() == "# mine\n" and not (tmp_path / "policies").exists()
    assert init("--force", "--", "mcp-server-time", cwd=tmp_path).returncode == 0
    assert "upstreams:" in (tmp_path / "guard.yaml").read_text()
    # a schema init wrote itself is no obstacle; one the user changed is theirs
    other = tmp_path / "other"
    (other / "schemas").mkdir(parents=True)
    (other / "schemas" / "policy.schema.json").write_text((tmp_path / "schemas" / "policy.schema.json").read_text())
    assert init("--out", "other", "--", "mcp-server-time", cwd=tmp_path).returncode == 0
    (other / "schemas" / "guard.schema.json").write_text("{}")
    done = init("--out", "other", "--", "mcp-server-time", cwd=tmp_path)
    assert done.returncode == 1 and "guard.schema.json" in done.stderr


def test_a_server_that_does_not_start_writes_nothing(tmp_path: Path) -> None:
    done = init("--out", "g", "--name", "notes", "--", *recording_server_command("--fail-start"), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "upstream notes could not be started" in done.stderr and "nothing was written" in done.stderr
    assert not (tmp_path / "g").exists()


def test_project_files_vscode_and_claude_code(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".vscode").mkdir(parents=True)
    (project / "ws").mkdir()
    (project / ".vscode" / "mcp.json").write_text(json.dumps({"servers": {
        "time": {"type": "stdio", "command": str(VENV_BIN / "mcp-server-time")},
        "guarded": {"type": "stdio", "command": str(mcp_guard_bin()), "args": ["run", "--config", "x.yaml"]},
    }}))
    done = init("--from-host-config", ".vscode/mcp.json", "--out", ".mcp-guard", "--rewrite-host-config", cwd=project)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "skipped guarded: already runs mcp-guard" in done.stderr
    data = json.loads((project / ".vscode" / "mcp.json").read_text())
    assert data["servers"]["mcp-guard"]["type"] == "stdio" and "guarded" in data["servers"] and "time" not in data["servers"]
    # the project's server runs in the project folder, as the host ran it
    assert load_config(project / ".mcp-guard/guard.yaml").upstreams["time"].cwd == str(project)


@pytest.mark.parametrize(("args", "message"), [
    ([], "give either a server command after -- or --from-host-config FILE"),
    (["--rewrite-host-config", "--", "mcp-server-time"], "--rewrite-host-config needs --from-host-config"),
])
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = init(*args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr


def test_claude_code_variables_are_expanded_for_the_start_and_kept_in_guard_yaml(tmp_path: Path) -> None:
    (tmp_path / ".mcp.json").write_text(json.dumps({"mcpServers": {
        "clock": {"type": "stdio", "command": "${TIME_BIN}/mcp-server-time", "env": {"TZ": "${MY_TZ:-UTC}"}},
    }}))
    done = subprocess.run([str(mcp_guard_bin()), "init", "--from-host-config", ".mcp.json", "--out", "g"], cwd=tmp_path,
                          env=tools_env({"TIME_BIN": str(VENV_BIN)}), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    text = (tmp_path / "g" / "guard.yaml").read_text()
    assert "${TIME_BIN}/mcp-server-time" in text and "${MY_TZ:-UTC}" in text
    assert (tmp_path / "g" / "guard.yaml").stat().st_mode & 0o777 == 0o600
