"""Agent hosts' MCP server files, as ``mcp-guard init`` reads and rewrites them.

| host | file | servers under |
|---|---|---|
| Claude Desktop | ``claude_desktop_config.json`` | ``mcpServers`` |
| Claude Code | ``.mcp.json`` (project) | ``mcpServers`` |
| Cursor | ``.cursor/mcp.json`` | ``mcpServers`` |
| VS Code | ``.vscode/mcp.json`` | ``servers`` (with ``"type": "stdio" / "http"``) |

An entry is a stdio server (``command``, ``args``, ``env``, optional ``cwd``) or a remote one
(``url``, ``headers``, ``type`` ``http``/``streamable-http``; ``sse`` is not supported by the
guard).  Parsing is pure: the caller reads the file (``config.read_sources``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_guard.config import UpstreamConfig
from mcp_guard.errors import ConfigError

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class HostServer:
    """One server entry of a host file (``key``), as the guard will start it (``cwd`` None = as the
    host did not say)."""

    key: str
    upstream: UpstreamConfig

    @property
    def name(self) -> str:
        return self.upstream.name


@dataclass(frozen=True, slots=True)
class HostConfig:
    file: Path
    key: str  # "mcpServers" or "servers"
    data: dict[str, Any]  # the whole document, for the rewrite
    servers: tuple[HostServer, ...]
    skipped: tuple[str, ...]  # "name: why" for entries the guard cannot take over

    @property
    def workspace(self) -> Path:
        """The project folder a project-scoped file belongs to (its folder, or the parent of
        ``.vscode``/``.cursor``); host servers with relative paths run there."""
        parent = self.file.parent
        return parent.parent if parent.name in (".vscode", ".cursor") else parent


def upstream_name(key: str, taken: set[str]) -> str:
    """A host entry's name in upstream-name syntax, unique among ``taken``."""
    base = _NAME_CHARS.sub("-", key).strip("-_")[:32].strip("-_") or "upstream"
    name, n = base, 2
    while name in taken:
        suffix = f"-{n}"
        name, n = base[: 32 - len(suffix)] + suffix, n + 1
    return name


def is_guard(command: str | None, args: Sequence[str]) -> bool:
    """An entry that already launches mcp-guard (so it is not wrapped again)."""
    words = [Path(command or "").name, *args[:3]]
    return "mcp-guard" in words or ("-m" in args[:2] and "mcp_guard" in args[:3])


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    return None


def _string_map(value: Any) -> dict[str, str] | None:
    if value is None:
        return {}
    if isinstance(value, dict) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value.values()):
        return {str(k): str(v) for k, v in value.items()}
    return None


def parse_host_config(text: str, file: Path) -> HostConfig:
    """The servers of a host file; a file that is not one is a ConfigError naming it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{file}:1:1: not a JSON host configuration: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:1:1: not a host configuration: expected a JSON object")
    key = "mcpServers" if "mcpServers" in data else "servers" if "servers" in data else None
    if key is None or not isinstance(data[key], dict):
        raise ConfigError(f"{file}:1:1: no `mcpServers` (Claude Desktop, Claude Code, Cursor) or `servers` (VS Code) object")
    workspace = str(HostConfig(file, key, data, (), ()).workspace)
    servers: list[HostServer] = []
    skipped: list[str] = []
    taken: set[str] = set()
    for entry_key, entry in data[key].items():
        if not isinstance(entry, dict):
            skipped.append(f"{entry_key}: not an object")
            continue
        kind = str(entry.get("type") or ("http" if entry.get("url") else "stdio")).lower()
        if entry.get("disabled") is True:
            skipped.append(f"{entry_key}: disabled in the host file")
            continue
        if kind == "sse":
            skipped.append(f"{entry_key}: an SSE server (the guard speaks stdio and Streamable HTTP to upstreams)")
            continue
        args = _strings(entry.get("args"))
        env = _string_map(entry.get("env"))
        headers = _string_map(entry.get("headers"))
        if args is None or env is None or headers is None:
            skipped.append(f"{entry_key}: `args`, `env` or `headers` has an unexpected shape")
            continue

        def subst(text: str) -> str:  # VS Code's ${workspaceFolder}; Claude Code/Cursor know the same idea
            return text.replace("${workspaceFolder}", workspace)

        if kind == "stdio":
            command = entry.get("command")
            if not isinstance(command, str) or not command:
                skipped.append(f"{entry_key}: no `command`")
                continue
            if is_guard(command, args):
                skipped.append(f"{entry_key}: already runs mcp-guard")
                continue
            cwd = entry.get("cwd")
            name = upstream_name(str(entry_key), taken)
            servers.append(HostServer(str(entry_key), UpstreamConfig(
                name=name, command=subst(command), args=tuple(subst(a) for a in args),
                env={k: subst(v) for k, v in env.items()}, cwd=subst(cwd) if isinstance(cwd, str) else None,
            )))
        elif kind in ("http", "streamable-http", "streamablehttp"):
            url = entry.get("url")
            if not isinstance(url, str) or not url:
                skipped.append(f"{entry_key}: no `url`")
                continue
            name = upstream_name(str(entry_key), taken)
            servers.append(HostServer(str(entry_key), UpstreamConfig(name=name, url=url, headers=headers)))
        else:
            skipped.append(f"{entry_key}: unknown server type `{kind}`")
            continue
        taken.add(name)
    return HostConfig(file, key, data, tuple(servers), tuple(skipped))


def guard_entry(host: HostConfig, launcher: Sequence[str], guard_yaml: Path | str,
                env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The host entry that launches ``mcp-guard run --config GUARD_YAML``; ``env`` passes the
    host's own inputs (VS Code ``${input:ID}``) on to the guard."""
    entry: dict[str, Any] = {}
    if host.key == "servers":
        entry["type"] = "stdio"
    entry["command"] = launcher[0]
    entry["args"] = [*launcher[1:], "run", "--config", str(guard_yaml)]
    if env:
        entry["env"] = dict(sorted(env.items()))
    return entry


def rewritten(host: HostConfig, launcher: Sequence[str], guard_yaml: Path | str, entry_name: str = "mcp-guard", *,
              env: Mapping[str, str] | None = None) -> str:
    """The host file with the guarded servers replaced by one entry that runs the guard; every other
    key and every server the guard did not take over stays as it was."""
    data = dict(host.data)
    guarded = {s.key for s in host.servers}
    servers = {k: v for k, v in host.data[host.key].items() if k not in guarded}
    name = entry_name
    n = 2
    while name in servers:
        name, n = f"{entry_name}-{n}", n + 1
    servers[name] = guard_entry(host, launcher, guard_yaml, env)
    data[host.key] = servers
    return json.dumps(data, indent=2) + "\n"
