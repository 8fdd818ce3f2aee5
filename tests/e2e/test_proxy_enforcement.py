"""Enforcement by the stdio proxy: mcp SDK Client -> ``mcp-guard run`` -> real upstreams.

Upstreams: the project's recording server (what it received is on disk), ``mcp-server-time``
(PyPI) and ``@modelcontextprotocol/server-filesystem`` (npm). Both protocol eras on the host face.
The filesystem server is given the *parent* of the workspace as its allowed directory, so every
path-escape refusal below is the guard's doing: the upstream itself would have served the secret.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fixtures import (
    MODES,
    Mode,
    RecordFile,
    guarded_session,
    pypi_server_command,
    recording_server_command,
    requires_tools,
    stdio_upstream,
    tool_path,
    tools_env,
    write_guard_config,
    write_policies,
)
from fixtures.recording_server import BASE_TOOLS
from helpers_proxy import LEGACY_INIT, raw_guard, text
from mcp.shared.exceptions import MCPError

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-filesystem")]

SECRET = "top secret: the upstream would have served this"


def _policies(workspace: Path) -> list[dict[str, Any]]:
    return [
        {
            "id": "enforce",
            "rules": [
                {"effect": "allow", "tools": ["rec/echo", "rec/list_notes"]},
                {"effect": "allow", "tools": ["rec/write_note", "rec/read_note"], "when": {"args.path": {"under": "/notes"}}},
                {"effect": "deny", "tools": ["rec/delete_note"], "reason": "Deleting notes is never delegated."},
                {"effect": "allow", "tools": ["time/get_current_time"]},
                {"effect": "allow", "tools": ["fs/read_text_file", "fs/list_directory"],
                 "when": {"args.path": {"under": str(workspace)}}},
                {"effect": "allow", "tools": ["fs/list_allowed_directories"]},
            ],
        }
    ]


VISIBLE = {
    "rec_echo", "rec_list_notes", "rec_write_note", "rec_read_note",
    "time_get_current_time",
    "fs_read_text_file", "fs_list_directory", "fs_list_allowed_directories",
}
HIDDEN = ["rec_delete_note", "rec_crash", "rec_getenv", "time_convert_time", "fs_write_file", "fs_move_file"]
UNKNOWN = ["rec_nope", "nope", "fs_nope", "time_get_current_time2", "rec_echo ", ""]


@pytest.fixture
def setup(tmp_path: Path, record_file: RecordFile) -> tuple[Path, Path]:
    """guard.yaml guarding rec + time + fs; returns (config, workspace)."""
    root = tmp_path / "root"
    workspace = root / "workspace"
    (workspace / "sub").mkdir(parents=True)
    (workspace / "README.md").write_text("hello from the workspace\n")
    (root / "secret.txt").write_text(SECRET)
    (root / "workspace-evil").mkdir()
    (root / "workspace-evil" / "secret.txt").write_text(SECRET)
    config = write_guard_config(
        tmp_path,
        {
            "rec": stdio_upstream(recording_server_command(), env=record_file.env()),
            "time": stdio_upstream(pypi_server_command("mcp-server-time")),
            "fs": stdio_upstream([str(tool_path("mcp-server-filesystem")), str(root)]),
        },
        _policies(workspace),
        identity={"user": "alice@example.com"},
    )
    return config, workspace


@pytest.mark.parametrize("mode", MODES)
async def test_filtered_list_allowed_call_refused_call_not_forwarded(
    mode: Mode, setup: tuple[Path, Path], record_file: RecordFile, tmp_path: Path
) -> None:
    config, _ = setup
    async with guarded_session(config, mode=mode, stderr=tmp_path / "guard.log") as c:
        tools = {tool.name: tool for tool in (await c.list_tools()).tools}
        assert set(tools) == VISIBLE

        # definitions pass through as the upstream wrote them, only the name is namespaced
        echo = next(t for t in BASE_TOOLS if t.name == "echo")
        assert tools["rec_echo"].description == echo.description
        assert tools["rec_echo"].input_schema == echo.input_schema

        # allowed calls reach the upstream and come back unchanged
        assert text(await c.call_tool("rec_echo", {"text": "hi"})) == "hi"
        assert not (await c.call_tool("rec_write_note", {"path": "/notes/a", "text": "A"})).is_error
        assert text(await c.call_tool("rec_read_note", {"path": "/notes/a"})) == "A"
        now = json.loads(text(await c.call_tool("time_get_current_time", {"timezone": "UTC"})))
        assert now["timezone"] == "UTC"

        # a visible tool refused by an argument condition: one sentence, isError, never forwarded
        refused = await c.call_tool("rec_write_note", {"path": "/etc/passwd", "text": "x"})
        assert refused.is_error
        assert text(refused) == "mcp-guard denied rec/write_note: args.path must be under /notes (policy enforce)"
        assert len(refused.content) == 1
        refused = await c.call_tool("rec_read_note", {"path": "/notes/../etc/passwd"})
        assert refused.is_error and text(refused).startswith("mcp-guard denied rec/read_note: ")
        # a missing argument makes the condition false, so the call is refused too
        assert (await c.call_tool("rec_read_note", {})).is_error

    assert record_file.calls() == [
        ("echo", {"text": "hi"}),
        ("write_note", {"path": "/notes/a", "text": "A"}),
        ("read_note", {"path": "/notes/a"}),
    ]
    # the upstream's stderr went to the guard's log, never to the host
    assert "recording-server started" in (tmp_path / "guard.log").read_text()


@pytest.mark.parametrize("mode", MODES)
async def test_hidden_tool_is_indistinguishable_from_unknown(
    mode: Mode, setup: tuple[Path, Path], record_file: RecordFile
) -> None:
    config, workspace = setup
    async with guarded_session(config, mode=mode) as c:
        answers: dict[str, tuple[int, str, Any]] = {}
        for name in HIDDEN + UNKNOWN:
            # even arguments a visible sibling would accept change nothing
            with pytest.raises(MCPError) as caught:
                await c.call_tool(name, {"path": str(workspace / "README.md"), "text": "x"})
            answers[name] = (caught.value.code, caught.value.message, caught.value.data)
        assert (await c.call_tool("rec_echo", {"text": "still serving"})).content
    for name, answer in answers.items():
        assert answer == (-32602, f"Unknown tool: {name}", None), name
    assert record_file.tools_called() == ["echo"]


ESCAPES = [
    pytest.param("{ws}/../secret.txt", id="dotdot"),
    pytest.param("{ws}/sub/../../secret.txt", id="dotdot-deep"),
    pytest.param("{ws}//../secret.txt", id="double-slash"),
    pytest.param("/{ws}/../secret.txt", id="leading-double-slash"),
    pytest.param("{ws}/./../secret.txt", id="dot-slash"),
    pytest.param("{ws}/../secret.txt/", id="trailing-slash"),
    pytest.param("{ws}-evil/secret.txt", id="sibling-prefix"),
    pytest.param("{root}/secret.txt", id="outside"),
    pytest.param("secret.txt", id="relative"),
    pytest.param("workspace/../secret.txt", id="relative-dotdot"),
    pytest.param("../root/secret.txt", id="relative-up"),
]


@pytest.mark.parametrize("mode", MODES)
async def test_path_escapes_against_server_filesystem_are_refused(mode: Mode, setup: tuple[Path, Path]) -> None:
    config, workspace = setup
    sentence = f"mcp-guard denied fs/read_text_file: args.path must be under {workspace} (policy enforce)"
    async with guarded_session(config, mode=mode) as c:
        ok = await c.call_tool("fs_read_text_file", {"path": str(workspace / "README.md")})
        assert not ok.is_error and text(ok) == "hello from the workspace\n"
        listing = await c.call_tool("fs_list_directory", {"path": str(workspace)})
        assert "README.md" in text(listing)
        for param in ESCAPES:
            path = str(param.values[0]).format(ws=workspace, root=workspace.parent)
            result = await c.call_tool("fs_read_text_file", {"path": path})
            assert result.is_error, path
            assert text(result) == sentence, path
            assert SECRET not in result.model_dump_json()
        # the upstream itself would have answered: the parent directory is within its allowed set
        allowed = text(await c.call_tool("fs_list_allowed_directories", {}))
        assert str(workspace.parent) in allowed


@pytest.mark.parametrize("mode", MODES)
async def test_prefix_false_keeps_upstream_names(mode: Mode, tmp_path: Path, record_file: RecordFile) -> None:
    config = write_guard_config(
        tmp_path,
        {
            "rec": stdio_upstream(recording_server_command(), env=record_file.env(), prefix=False),
            "time": stdio_upstream(pypi_server_command("mcp-server-time")),
        },
        [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo", "time/*"]}]}],
    )
    async with guarded_session(config, mode=mode) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert names == {"echo", "time_get_current_time", "time_convert_time"}
        assert text(await c.call_tool("echo", {"text": "plain"})) == "plain"
        with pytest.raises(MCPError) as caught:
            await c.call_tool("rec_echo", {"text": "prefixed"})
        assert (caught.value.code, caught.value.message) == (-32602, "Unknown tool: rec_echo")
    assert record_file.calls() == [("echo", {"text": "plain"})]


async def test_inline_form_guards_one_server(tmp_path: Path, record_file: RecordFile) -> None:
    policies = write_policies(tmp_path / "pol", [{"id": "p", "rules": [{"effect": "allow", "tools": ["notes/echo"]}]}])
    argv = ["--policies", str(policies), "--name", "notes", "--", *recording_server_command()]
    async with guarded_session(None, *argv, env=None) as c:
        assert [tool.name for tool in (await c.list_tools()).tools] == ["notes_echo"]
        assert text(await c.call_tool("notes_echo", {"text": "inline"})) == "inline"


async def test_collision_is_refused_naming_both_tools(tmp_path: Path) -> None:
    config = write_guard_config(
        tmp_path,
        {
            "a": stdio_upstream(recording_server_command(), prefix=False),
            "b": stdio_upstream(recording_server_command(), prefix=False),
        },
    )
    async with raw_guard(config, stderr=tmp_path / "guard.log") as guard:
        answer = await guard.request("initialize", LEGACY_INIT)
        exit_code = await asyncio.wait_for(guard.proc.wait(), 30)  # a start-up error: answered, then it exits
    assert exit_code == 1
    assert answer["error"]["code"] == -32603
    message = answer["error"]["message"]
    assert "collision" in message and "a/echo" in message and "b/echo" in message, message
    assert "a/echo and b/echo" in (tmp_path / "guard.log").read_text()


async def test_upstream_environment_is_its_own(tmp_path: Path, record_file: RecordFile) -> None:
    """The child gets the essentials, its configured env (with ${VAR} expansion) and what
    env_passthrough names; never the rest of the guard's environment (other upstreams' tokens,
    telemetry credentials) and never the guard's MCP_GUARD_* secrets."""
    config = write_guard_config(
        tmp_path,
        {
            "rec": stdio_upstream(recording_server_command(),
                                  env={**record_file.env(), "GIVEN": "${GUARD_TEST_VALUE}", "DEFAULTED": "${GUARD_TEST_UNSET:-dflt}"},
                                  env_passthrough=["PASS_ME", "PASS_PREFIX_*", "MCP_GUARD_*"]),
            "tickets": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer ${TICKETS_TOKEN}"}},
        },
        [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/getenv"]}]}],
    )
    env = tools_env({
        "GUARD_TEST_VALUE": "expanded", "MCP_GUARD_SECRET_THING": "must-not-leak", "TICKETS_TOKEN": "tickets-secret",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=otlp-secret", "PASS_ME": "passed", "PASS_PREFIX_A": "a", "LANG": "C.UTF-8",
    })
    env.pop("GUARD_TEST_UNSET", None)
    async with guarded_session(config, env=env) as c:
        async def getenv(name: str) -> str:
            return text(await c.call_tool("rec_getenv", {"name": name}))

        assert await getenv("GIVEN") == "expanded"
        assert await getenv("DEFAULTED") == "dflt"
        assert await getenv("MCP_GUARD_SECRET_THING") == ""  # not even when env_passthrough asks for it
        assert await getenv("TICKETS_TOKEN") == ""
        assert await getenv("OTEL_EXPORTER_OTLP_HEADERS") == ""
        assert await getenv("PASS_ME") == "passed"
        assert await getenv("PASS_PREFIX_A") == "a"
        assert await getenv("PATH") == env["PATH"]
        assert await getenv("HOME") == env["HOME"]
        assert await getenv("LANG") == "C.UTF-8"
