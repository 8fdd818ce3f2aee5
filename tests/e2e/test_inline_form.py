"""The inline form (``mcp-guard run --policies P -- COMMAND``) as a new user types it: the upstream is
named after its command, identity flags reach the policies' subjects, and policies naming upstreams
that are not configured get one hint line, not a warning per pattern."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import ROOT, VENV_BIN, guarded_session, requires_tools, tool_path

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
policies:
  - id: reviewers
    subjects: {{users: [alice], agents: [reviewer], purposes: [code-review]}}
    rules:
      - effect: allow
        tools: ["filesystem/read_text_file", "filesystem/list_allowed_directories"]
        when: {{args.path: {{under: {ws}}}}}
      - effect: allow
        tools: ["filesystem/list_allowed_directories"]
"""


@requires_tools("mcp-server-filesystem")
async def test_the_server_is_named_after_its_command_and_identity_flags_count(tmp_path: Path) -> None:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "a.md").write_text("hello\n")
    (tmp_path / "p.yaml").write_text(POLICY.format(ws=ws))
    fs = str(tool_path("mcp-server-filesystem"))
    log = tmp_path / "guard.log"
    async with guarded_session(None, "--policies", str(tmp_path / "p.yaml"), "--user", "alice", "--agent", "reviewer",
                               "--purpose", "code-review", "--", fs, str(ws), stderr=log) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        assert names == ["filesystem_list_allowed_directories", "filesystem_read_text_file"]
        result = await client.call_tool("filesystem_read_text_file", {"path": str(ws / "a.md")})
        assert not result.is_error
    # another purpose: nothing
    async with guarded_session(None, "--policies", str(tmp_path / "p.yaml"), "--user", "alice", "--agent", "reviewer",
                               "--purpose", "marketing", "--", fs, str(ws)) as client:
        assert (await client.list_tools()).tools == []


@requires_tools("mcp-server-filesystem")
async def test_policies_for_other_upstreams_get_one_hint_line(tmp_path: Path) -> None:
    log = tmp_path / "guard.log"
    async with guarded_session(None, "--policies", str(ROOT / "policies"), "--", str(tool_path("mcp-server-filesystem")),
                               str(tmp_path), stderr=log) as client:
        assert (await client.list_tools()).tools == []
    text = log.read_text()
    assert "no upstream named" not in text, text
    hints = [line for line in text.splitlines() if "policies name upstreams that are not configured" in line]
    assert len(hints) == 1, text
    assert "fs (" in hints[0] and "time (" in hints[0] and "configured: filesystem" in hints[0] and "--name" in hints[0]


async def test_policies_written_for_upstream_keep_the_documented_default(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "version: 1\npolicies:\n  - id: t\n    rules:\n      - {effect: allow, tools: [upstream/get_current_time]}\n")
    async with guarded_session(None, "--policies", str(tmp_path / "p.yaml"), "--", str(VENV_BIN / "mcp-server-time")) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["upstream_get_current_time"]


async def test_name_still_wins(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "version: 1\npolicies:\n  - id: t\n    rules:\n      - {effect: allow, tools: [clock/get_current_time]}\n")
    async with guarded_session(None, "--policies", str(tmp_path / "p.yaml"), "--name", "clock", "--",
                               str(VENV_BIN / "mcp-server-time")) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["clock_get_current_time"]


@requires_tools("mcp-server-filesystem")
async def test_the_readme_inline_form_with_the_readme_policy(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("mcp-guard run ") and "# inline form" in x)
    argv = line.split("#")[0].split()
    assert argv[:6] == ["mcp-guard", "run", "--name", "fs", "--policies", "./policies"], line
    block = readme.split("# policies/workspace.yaml\n", 1)[1].split("```", 1)[0]
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "notes.md").write_text("hello\n")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "workspace.yaml").write_text(block.replace("/home/me/workspace", str(ws)))
    # the same line, with the locally installed server in place of the npx download
    server = argv.index("--") + 1
    run_args = [*argv[2:server], str(tool_path("mcp-server-filesystem")), str(ws)]
    run_args[run_args.index("./policies")] = str(tmp_path / "policies")
    async with guarded_session(None, *run_args) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"fs_read_text_file", "fs_list_directory", "fs_write_file"} <= names
        assert "fs_move_file" not in names
        assert not (await client.call_tool("fs_read_text_file", {"path": str(ws / "notes.md")})).is_error
