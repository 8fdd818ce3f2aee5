"""Installed the way MCP users install servers: a wheel in a fresh venv (and ``uvx --from WHEEL``),
run from a directory outside the checkout, with a host-like short PATH and no npm tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures import VENV_BIN, concrete_examples, requires_tools, stdio_session
from fixtures.release import the_wheel

pytestmark = [pytest.mark.xdist_group("wheel"), pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def wheel(release_dist: Path) -> Path:
    """The release wheel, built once per run with the sdist (``release_dist`` in conftest)."""
    return the_wheel(release_dist)


_NETWORK = re.compile(r"^(SSL_CERT_\w+|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|PIP_\w+|UV_\w+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)$")


def _host_env(home: Path) -> dict[str, str]:
    """What a GUI host gives its servers: a short PATH without the project's tools (plus this
    machine's certificate and proxy settings, which installers need to reach the package index)."""
    env = {k: v for k, v in os.environ.items() if _NETWORK.match(k)}
    return {**env, "PATH": os.pathsep.join(["/usr/bin", "/bin"]), "HOME": str(home), "LANG": "C.UTF-8"}


def test_the_wheel_in_a_fresh_venv(release_venv: Path, tmp_path: Path) -> None:
    venv = release_venv  # the wheel and its declared dependencies only, in a new venv (fixtures/release.py)
    outside = tmp_path / "somewhere"
    outside.mkdir()
    guard = str(venv / "bin" / "mcp-guard")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([guard, *args], cwd=outside, env=_host_env(outside), capture_output=True, text=True, timeout=120)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("mcp-guard, version ")
    demo = run("demo")
    assert demo.returncode == 0, demo.stderr
    assert "mcp_guard.demo_server" in demo.stdout  # no Node, no download: the packaged server
    assert "1. Discovery: the agent can see 8 tools" in demo.stdout
    assert "mcp-guard denied fs/read_text_file: args.path must be under" in demo.stdout
    assert "-> Successfully wrote to" in demo.stdout and "Unknown tool: fs_move_file" in demo.stdout
    assert "6 hash-chained records" in demo.stdout and "Traceback" not in demo.stderr  # the hidden call is audited too
    helped = run("init", "--help")
    assert helped.returncode == 0 and "--from-host-config" in helped.stdout
    # init against the packaged server, then a check of what it wrote
    (outside / "ws").mkdir()
    init = run("init", "--name", "files", "--", str(venv / "bin" / "python"), "-m", "mcp_guard.demo_server", "./ws")
    assert init.returncode == 0, init.stderr + init.stdout
    assert "6 allowed, 3 need approval, 1 denied" in init.stdout and "ok: 1 policy" in init.stdout


@pytest.mark.skipif(not (VENV_BIN / "uvx").exists(), reason="uv is not installed in the venv (pip install uv)")
def test_uvx_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    env = {**_host_env(tmp_path), "HOME": os.environ.get("HOME", str(tmp_path))}  # reuse uv's cache
    done = subprocess.run([str(VENV_BIN / "uvx"), "--from", str(wheel), "mcp-guard", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mcp-guard, version ")
    assert shutil.which("mcp-guard", path=env["PATH"]) is None  # it ran from uv's environment, not from PATH


@pytest.mark.skipif(not (VENV_BIN / "uvx").exists(), reason="uv is not installed in the venv (pip install uv)")
@requires_tools("mcp-server-filesystem")
async def test_the_uvx_host_entry_guards_the_quickstart(wheel: Path, tmp_path: Path) -> None:
    examples = concrete_examples(tmp_path, {"/path/to/mcp-guard/dist/mcp_guard-0.1.0-py3-none-any.whl": str(wheel)})
    entry = json.loads((examples / "uvx" / "claude_desktop_config.json").read_text())["mcpServers"]["guarded-fs"]
    assert entry["command"] == "uvx"
    env = {**_host_env(tmp_path), "HOME": os.environ.get("HOME", str(tmp_path))}  # uv's cache
    async with stdio_session([str(VENV_BIN / "uvx"), *entry["args"]], env=env, cwd=tmp_path) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "fs_read_text_file" in names
        assert not (await client.call_tool("fs_read_text_file", {"path": "hello.md"})).is_error
