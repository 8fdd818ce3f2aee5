"""The stdio proxy's `roots:` upstream option against server-filesystem, and policy limits.

server-filesystem replaces its allowed directories with whatever ``roots/list`` returns, so the
roots an upstream receives are the guard's decision: ``none`` (the upstream is not offered roots;
it keeps its command-line directories), ``pass`` (the host's roots), or a fixed list of paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as t
import pytest
from fixtures import (
    MODES,
    Mode,
    RecordFile,
    guarded_session,
    recording_server_command,
    requires_tools,
    stdio_upstream,
    tool_path,
    write_guard_config,
)
from helpers_proxy import eventually, text
from pydantic import FileUrl

pytestmark = pytest.mark.e2e

FS_POLICY = [{"id": "fs", "rules": [{"effect": "allow", "tools": ["fs/list_allowed_directories"]}]}]


def _dirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {name: (tmp_path / name).resolve() for name in ("cmdline", "host", "fixed", "host2")}
    for d in dirs.values():
        d.mkdir()
    return dirs


def _fs_config(tmp_path: Path, dirs: dict[str, Path], roots: Any) -> Path:
    upstream = stdio_upstream([str(tool_path("mcp-server-filesystem")), str(dirs["cmdline"])], roots=roots)
    return write_guard_config(tmp_path, {"fs": upstream}, FS_POLICY)


def _host_roots(*paths: Path) -> Any:
    async def list_roots(context: Any) -> t.ListRootsResult:
        return t.ListRootsResult(roots=[t.Root(uri=FileUrl(p.as_uri()), name=p.name) for p in paths])

    return list_roots


async def _allowed(c: Any) -> set[str]:
    """server-filesystem's answer is a heading line, then one directory per line."""
    return set(text(await c.call_tool("fs_list_allowed_directories", {})).splitlines()[1:])


@requires_tools("mcp-server-filesystem")
@pytest.mark.parametrize("mode", MODES)
async def test_roots_none_keeps_the_upstreams_own_directories(mode: Mode, tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    async with guarded_session(_fs_config(tmp_path, dirs, "none"), mode=mode,
                               list_roots_callback=_host_roots(dirs["host"])) as c:
        allowed = await _allowed(c)
    assert allowed == {str(dirs["cmdline"])}


@requires_tools("mcp-server-filesystem")
@pytest.mark.parametrize("mode", MODES)
async def test_roots_list_replaces_the_upstreams_directories(mode: Mode, tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    async with guarded_session(_fs_config(tmp_path, dirs, [str(dirs["fixed"])]), mode=mode,
                               list_roots_callback=_host_roots(dirs["host"])) as c:
        allowed = await eventually(lambda: _allowed(c), lambda out: str(dirs["fixed"]) in out)
    assert allowed == {str(dirs["fixed"])}


@requires_tools("mcp-server-filesystem")
async def test_roots_pass_gives_the_upstream_the_hosts_roots(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    current = [dirs["host"]]

    async def list_roots(context: Any) -> t.ListRootsResult:
        return t.ListRootsResult(roots=[t.Root(uri=FileUrl(p.as_uri()), name=p.name) for p in current])

    async with guarded_session(_fs_config(tmp_path, dirs, "pass"), mode="legacy", list_roots_callback=list_roots) as c:
        allowed = await eventually(lambda: _allowed(c), lambda out: str(dirs["host"]) in out)
        assert allowed == {str(dirs["host"])}
        # the host changes its roots: the upstream hears of it and asks again
        current[:] = [dirs["host2"]]
        await c.session.send_roots_list_changed()
        allowed = await eventually(lambda: _allowed(c), lambda out: str(dirs["host2"]) in out)
        assert allowed == {str(dirs["host2"])}


LIMITS = [{
    "id": "metered",
    "rules": [
        {"effect": "allow", "tools": ["rec/echo", "rec/list_notes"]},
        {"effect": "allow", "tools": ["rec/write_note"], "when": {"args.path": {"under": "/notes"}}},
    ],
    "limits": [
        {"tools": ["rec/echo"], "per_minute": 3},
        {"tools": ["rec/list_notes", "rec/write_note"], "per_session": 2},
    ],
}]


@pytest.mark.parametrize("mode", MODES)
async def test_limits_per_minute_and_per_session(mode: Mode, tmp_path: Path, record_file: RecordFile) -> None:
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record_file.env())},
                                LIMITS)
    async with guarded_session(config, mode=mode) as c:
        for i in range(3):
            assert text(await c.call_tool("rec_echo", {"text": str(i)})) == str(i)
        limited = await c.call_tool("rec_echo", {"text": "4th"})
        assert limited.is_error
        assert text(limited).startswith("mcp-guard denied rec/echo: rate limit of 3 calls per minute reached")

        # a refused call is not counted against the budget
        assert (await c.call_tool("rec_write_note", {"path": "/etc/x", "text": "x"})).is_error
        assert not (await c.call_tool("rec_list_notes", {})).is_error
        assert not (await c.call_tool("rec_write_note", {"path": "/notes/a", "text": "A"})).is_error
        spent = await c.call_tool("rec_list_notes", {})
        assert spent.is_error
        assert text(spent) == "mcp-guard denied rec/list_notes: the session's call budget is used up"
        assert (await c.call_tool("rec_write_note", {"path": "/notes/b", "text": "B"})).is_error
    assert record_file.calls() == [
        ("echo", {"text": "0"}), ("echo", {"text": "1"}), ("echo", {"text": "2"}),
        ("list_notes", {}), ("write_note", {"path": "/notes/a", "text": "A"}),
    ]


