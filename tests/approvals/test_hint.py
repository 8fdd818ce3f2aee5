"""The approval hint in the guard's log is a command that works as printed from any directory, and
the approvals CLI never creates a stray state database where the guard does not look."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from approvalkit import GuardYaml
from fixtures import RecordFile, guarded_session, mcp_guard_bin, tools_env

pytestmark = pytest.mark.e2e

HINT = re.compile(r"mcp-guard approvals approve (.+?) \(or reject")


def _read(log: Path) -> str:
    return log.read_text() if log.exists() else ""


async def _hint(log: Path) -> str:
    for _ in range(200):
        m = HINT.search(_read(log))
        if m:
            return m.group(0)[: -len(" (or reject")]
        await asyncio.sleep(0.1)
    raise AssertionError("the guard logged no approval hint:\n" + _read(log))


async def test_the_printed_hint_approves_from_another_directory(guard_yaml: GuardYaml, record_file: RecordFile,
                                                                 tmp_path: Path) -> None:
    config = guard_yaml(timeout="30s", state="sqlite:///.mcp-guard/state.db")  # relative to guard.yaml's folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = tmp_path / "guard.log"
    async with guarded_session(config, stderr=log) as client:
        call = asyncio.ensure_future(client.call_tool("notes_write_note", {"path": "/srv/tickets/1.md", "text": "x"}))
        hint = await _hint(log)
        assert f"--config {config.resolve()}" in hint
        argv = shlex.split(hint)
        argv[0] = str(mcp_guard_bin())
        proc = await asyncio.create_subprocess_exec(*argv, cwd=elsewhere, env=tools_env(),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith("approved ")
        result = await asyncio.wait_for(call, 20)
        assert not result.is_error
    assert not (elsewhere / ".mcp-guard").exists()
    assert len(record_file.tools_called()) == 1


def test_inline_guards_name_their_state_url(tmp_path: Path) -> None:
    from mcp_guard.config import default_config
    from mcp_guard.proxy.approval_text import answer_options

    assert answer_options(default_config()).startswith(" --state sqlite:////")
    assert "private" in answer_options(default_config().__class__(state_url="memory://"))
    secret = default_config().__class__(state_url="redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in answer_options(secret)


@pytest.mark.parametrize("verb", ["approve", "reject", "list"])
def test_a_missing_state_file_is_refused_not_created(tmp_path: Path, verb: str) -> None:
    args = [] if verb == "list" else ["2b9b732c"]
    done = subprocess.run([str(mcp_guard_bin()), "approvals", verb, *args], cwd=tmp_path, env=tools_env(),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("mcp-guard: there is no state store at ") and "Traceback" not in done.stderr
    assert "--config" in done.stderr
    assert not (tmp_path / ".mcp-guard").exists()
    done = subprocess.run([str(mcp_guard_bin()), "approvals", verb, *args, "--state", f"sqlite:///{tmp_path}/x/state.db"],
                          cwd=tmp_path, env=tools_env(), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "no state store" in done.stderr
    assert not (tmp_path / "x").exists()
