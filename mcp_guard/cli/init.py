"""CLI: ``mcp-guard init`` — from a server command or a host's MCP file to a checked, pinned,
tested starting configuration (guard.yaml, policies, policy tests, guard.lock)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, overload

import click

from mcp_guard.cli.schema import render as render_schema
from mcp_guard.config import GuardConfig, UpstreamConfig, expand, read_sources
from mcp_guard.errors import GuardError
from mcp_guard.hostconfig import HostConfig, parse_host_config, rewritten
from mcp_guard.pinning import PinSet, diff, write_lock
from mcp_guard.policy import Effect
from mcp_guard.schema import FILES as SCHEMA_FILES
from mcp_guard.starter import StartingTool, render_guard_yaml, render_policy, render_tests, starting_tools
from mcp_guard.upstreams.naming import derive_upstream_name

PROJECT_FILES = (".mcp.json", "mcp.json")  # project-scoped: servers run in the project folder


def launcher() -> list[str]:
    """How a host starts this mcp-guard: its console script by absolute path, else ``python -m``."""
    me = Path(sys.argv[0])
    if me.name == "mcp-guard" and me.exists():
        return [str(me.resolve())]
    found = shutil.which("mcp-guard")
    return [str(Path(found).resolve())] if found else [sys.executable, "-m", "mcp_guard"]


def _from_command(command: tuple[str, ...], name: str | None, out: Path) -> tuple[dict[str, UpstreamConfig], dict[str, dict[str, Any]]]:
    upstream = name or derive_upstream_name(command) or "upstream"
    cwd = os.getcwd()
    spec: dict[str, Any] = {"command": command[0]}
    if command[1:]:
        spec["args"] = list(command[1:])
    if Path(cwd).resolve() != out.resolve():
        spec["cwd"] = _portable_dir(cwd, out)  # relative arguments (./workspace) mean what they meant where init ran
    return {upstream: UpstreamConfig(name=upstream, command=command[0], args=tuple(command[1:]), cwd=cwd)}, {upstream: spec}


_INPUT = re.compile(r"\$\{input:([^}]+)\}")


def _as_variable(text: str, inputs: dict[str, str]) -> str:
    """A VS Code ``${input:ID}`` becomes ``${MCP_GUARD_INPUT_ID}`` in guard.yaml; ``inputs``
    collects variable -> ``${input:ID}`` for the host entry's ``env``, so the host still asks
    for the value and hands it to the guard, which passes it on."""
    def sub(m: re.Match[str]) -> str:
        var = "MCP_GUARD_INPUT_" + re.sub(r"[^A-Za-z0-9]", "_", m.group(1)).upper()
        inputs[var] = m.group(0)
        return "${" + var + "}"
    return _INPUT.sub(sub, text)


def _portable_dir(path: str, out: Path) -> str:
    """``path`` relative to guard.yaml's folder when both sit in one project (guard.yaml resolves
    relative paths against its own folder), so the configuration can be committed."""
    p, base = Path(path).resolve(), out.resolve()
    try:
        p.relative_to(base.parent)
    except ValueError:
        return path
    return os.path.relpath(p, base)


def _from_host(host: HostConfig, out: Path, inputs: dict[str, str]) -> tuple[dict[str, UpstreamConfig], dict[str, dict[str, Any]]]:
    configs: dict[str, UpstreamConfig] = {}
    specs: dict[str, dict[str, Any]] = {}
    project = host.file.name in PROJECT_FILES
    for server in host.servers:
        s = server.upstream
        spec: dict[str, Any] = {}
        if s.command is not None:
            cwd = s.cwd or (str(host.workspace) if project else None)
            spec["command"] = s.command
            if s.args:
                spec["args"] = [_as_variable(a, inputs) for a in s.args]
            if s.env:
                spec["env"] = {k: _as_variable(v, inputs) for k, v in s.env.items()}
            if cwd and Path(cwd).resolve() != out.resolve():
                spec["cwd"] = _portable_dir(cwd, out)
        else:
            spec["url"] = s.url
            if s.headers:
                spec["headers"] = {k: _as_variable(v, inputs) for k, v in s.headers.items()}
            cwd = None
        # the host expands ${VAR} in these files (Claude Code) and so does guard.yaml: expand them
        # for this one start; guard.yaml keeps them as written
        configs[s.name] = dataclasses.replace(
            s, cwd=cwd or str(out.resolve()), command=_expanded(s.command), args=tuple(map(_expanded, s.args)),
            env={k: _expanded(v) for k, v in s.env.items()}, headers={k: _expanded(v) for k, v in s.headers.items()},
            url=_expanded(s.url),
        )
        specs[s.name] = spec
    return configs, specs


@overload
def _expanded(text: str) -> str: ...
@overload
def _expanded(text: None) -> None: ...
def _expanded(text: str | None) -> str | None:
    """For the one start: ``${VAR}`` from this environment; a VS Code input (only the host can ask
    for it) is empty."""
    return None if text is None else expand(_INPUT.sub("", text), os.environ)[0]


def _backup_path(file: Path) -> Path:
    """A backup name that is not taken: a backup is never overwritten."""
    candidate = file.with_name(file.name + ".mcp-guard-backup")
    n = 2
    while candidate.exists():
        candidate = file.with_name(f"{file.name}.mcp-guard-backup-{n}")
        n += 1
    return candidate


def _run_quietly(command: click.Command, args: list[str]) -> int:
    """Run another mcp-guard command in this process; its output is shown as it is."""
    try:
        command.main(args=args, prog_name=f"mcp-guard {command.name}", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except GuardError as exc:
        click.echo(f"mcp-guard: {exc}", err=True)
        return exc.exit_code
    return 0


@click.command("init", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--from-host-config", "host_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="An agent host's MCP file whose servers to guard: claude_desktop_config.json (Claude Desktop), "
                   ".mcp.json (Claude Code), .cursor/mcp.json (Cursor) or .vscode/mcp.json (VS Code).")
@click.option("--out", "out_dir", default=".", show_default=True, metavar="DIR", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write guard.yaml, guard.lock and policies/ into (created if missing).")
@click.option("--name", default=None, metavar="NAME",
              help="Upstream name of the server given after -- (default: derived from the command, e.g. "
                   "mcp-server-time -> time, see `mcp-guard run --help`).")
@click.option("--rewrite-host-config", is_flag=True,
              help="Also rewrite FILE so the host launches `mcp-guard run --config DIR/guard.yaml` instead of the "
                   "servers it guards (the original is kept as FILE.mcp-guard-backup).")
@click.option("--force", is_flag=True, help="Overwrite guard.yaml, guard.lock, the generated policy files and schemas if they exist.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def init(host_file: Path | None, out_dir: Path, name: str | None, rewrite_host_config: bool, force: bool,
         command: tuple[str, ...]) -> None:
    """Write a starting guard.yaml, policy, policy tests and guard.lock from the tools your servers list.

    Give one server command after --, or a host's MCP file.  init starts each server once, reads
    its tools, and writes into DIR:

    \b
      guard.yaml                  the servers as upstreams, identity, audit, state, pinning: enforce
      policies/NAME.yaml          one policy per server: tools annotated readOnlyHint are allowed,
                                  destructiveHint or openWorldHint ones need a human's approval,
                                  all others are denied (listed as comments, to move into a rule)
      policies/NAME.test.yaml     one test case per tool with its starting decision
      guard.lock                  the tool definitions seen now, pinned
      schemas/*.schema.json       the JSON Schemas the YAML files name on their first line, so an
                                  editor with the YAML language server checks them as you type

    Annotations are the server's own claims, so the rules name the observed tools literally and
    the lock file pins their definitions: a tool that appears or changes later is hidden until
    `mcp-guard pin --update` accepts it.  init then runs `check` and `test` on what it wrote and
    prints the next step.  Existing files are never overwritten without --force; if a server
    cannot be started, nothing is written (exit 1).

    \b
    mcp-guard init -- mcp-server-time
    mcp-guard init --out guard -- npx -y @modelcontextprotocol/server-filesystem ./workspace
    mcp-guard init --from-host-config .mcp.json --out .mcp-guard --rewrite-host-config
    """
    from mcp_guard.cli.policy import check, test_cmd
    from mcp_guard.cli.run import setup_logging
    from mcp_guard.upstreams.collect import collect_tools

    if bool(command) == bool(host_file):
        raise click.UsageError("give either a server command after -- or --from-host-config FILE (not both)")
    if rewrite_host_config and host_file is None:
        raise click.UsageError("--rewrite-host-config needs --from-host-config FILE")
    if host_file is not None and name is not None:
        raise click.UsageError("--name names the server given after --; a host file names its own servers")
    setup_logging("ERROR")
    out = out_dir.resolve()
    host: HostConfig | None = None
    inputs: dict[str, str] = {}  # guard.yaml variable -> the host's ${input:ID}
    if host_file is not None:
        ((_, text),) = read_sources([host_file])
        host = parse_host_config(text, host_file.resolve())
        for why in host.skipped:
            click.echo(f"skipped {why}", err=True)
        if not host.servers:
            raise GuardError(f"{host_file} has no server mcp-guard can guard")
        configs, specs = _from_host(host, out, inputs)
        origin = f"from {host_file}"
    else:
        configs, specs = _from_command(command, name, out)
        origin = "from `" + " ".join(shlex.quote(c) for c in command) + "`"

    guard_yaml, lock = out / "guard.yaml", out / "guard.lock"
    policy_files = {n: (out / "policies" / f"{n}.yaml", out / "policies" / f"{n}.test.yaml") for n in configs}
    schemas = {kind: (out / "schemas" / file, render_schema(kind)) for kind, file in SCHEMA_FILES.items()}
    targets = [guard_yaml, lock, *(p for pair in policy_files.values() for p in pair)]
    existing = [p for p in targets if p.exists()]
    existing += [p for p, text in schemas.values() if p.exists() and p.read_text(encoding="utf-8") != text]
    if existing and not force:
        raise GuardError(f"{', '.join(_show(p) for p in existing)} already exist; give --force to overwrite, or --out DIR")

    click.echo(f"starting {', '.join(configs)} to list {'its' if len(configs) == 1 else 'their'} tools...", err=True)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # the servers start where the guard will start them
    tools, failed = asyncio.run(collect_tools(GuardConfig(upstreams=configs)))
    if failed:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        for up, why in sorted(failed.items()):
            click.echo(f"mcp-guard: upstream {up} could not be started: {why}", err=True)
        raise GuardError("nothing was written: fix the server command (or remove the server) and run init again")

    observed = starting_tools(tools)
    (out / "policies").mkdir(exist_ok=True)
    (out / "schemas").mkdir(exist_ok=True)
    for path, text in schemas.values():
        _write(path, text)

    def modeline(path: Path, kind: str) -> str:
        """The editor's schema line, as the hand-written files carry it (relative to ``path``)."""
        return f"# yaml-language-server: $schema={os.path.relpath(schemas[kind][0], path.parent)}\n"

    secrets = any("env" in s or "headers" in s for s in specs.values())
    _write(guard_yaml, modeline(guard_yaml, "config") + render_guard_yaml(specs, origin, secrets=secrets), private=secrets)
    for up, (policy, tests) in policy_files.items():
        mine = [t for t in observed if t.upstream == up]
        _write(policy, modeline(policy, "policy") + render_policy(up, mine, origin, roots=_roots(configs[up])))
        _write(tests, modeline(tests, "tests") + render_tests(up, mine))
    write_lock(lock, diff(PinSet(), tools)[0])

    click.echo(f"wrote {_show(guard_yaml)}, {_show(lock)} ({len(observed)} tools pinned) and:")
    for up, (policy, tests) in policy_files.items():
        click.echo(f"  {_show(policy)}: {_summary([t for t in observed if t.upstream == up])}; {_show(tests)}")
    click.echo("")
    click.echo(f"$ mcp-guard check --config {_show(guard_yaml)}")
    for var in inputs:  # only the host can fill a VS Code input in: check the file as it will be with one
        os.environ.setdefault(var, "(given by the host)")
    checked = _run_quietly(check, ["--config", str(guard_yaml)])
    click.echo(f"$ mcp-guard test {_show(out / 'policies')}")
    tested = _run_quietly(test_cmd, [str(out / "policies")])

    argv = [*launcher(), "run", "--config", str(guard_yaml)]
    if checked or tested:
        raise GuardError(f"the written configuration does not pass check/test (above); {_show(host.file) if host else 'no host file'} was not changed")
    if host is not None and rewrite_host_config:
        backup = _backup_path(host.file)
        shutil.copy2(host.file, backup)
        entry_cmd, config_arg, fixed = portable_entry(host, launcher(), guard_yaml)
        host.file.write_text(rewritten(host, entry_cmd, config_arg, env=inputs), encoding="utf-8")
        if not fixed:
            click.echo(f"note: {_show(host.file)} names {entry_cmd[0]} by its absolute path (mcp-guard is not on PATH "
                       "nor inside the project): put mcp-guard on PATH before committing it", err=True)
        click.echo("")
        click.echo(f"rewrote {_show(host.file)}: the host now launches mcp-guard for {', '.join(s.key for s in host.servers)} "
                   f"(original kept as {_show(backup)})")
    click.echo("")
    if host is not None and rewrite_host_config:
        click.echo("next: read and narrow the policy (add `when:` conditions), then restart the host")
    else:
        click.echo("next: read and narrow the policy (add `when:` conditions), then register the guard with your host:")
        entry: dict[str, Any] = {"command": argv[0], "args": argv[1:], **({"env": inputs} if inputs else {})}
        click.echo(f"  Claude Code:  claude mcp add --scope project mcp-guard -- {shlex.join(argv)}")
        click.echo(f"  other hosts:  an entry \"mcp-guard\": {json.dumps(entry)} (VS Code: add \"type\": \"stdio\")")


def portable_entry(host: HostConfig, launch: list[str], guard_yaml: Path) -> tuple[list[str], str, bool]:
    """(the command, the --config argument, whether the command is portable) for the host entry.

    A project file (.mcp.json, .vscode/mcp.json, .cursor/mcp.json) is committed and shared, so it
    names paths relative to the project (``${workspaceFolder}/...`` where the host knows it; Claude
    Code starts servers in the project folder) and mcp-guard by name when it is on PATH.  A user's
    own file (Claude Desktop) keeps absolute paths."""
    if host.file.name not in PROJECT_FILES:
        return launch, str(guard_yaml), True
    root = host.workspace.resolve()
    prefix = "${workspaceFolder}/" if host.file.parent.name in (".vscode", ".cursor") else "./"

    def inside(p: Path) -> str | None:
        try:
            return prefix + p.resolve().relative_to(root).as_posix()
        except ValueError:
            return None

    config_arg = inside(guard_yaml) or str(guard_yaml)
    on_path = shutil.which("mcp-guard")
    if len(launch) == 1 and on_path and Path(on_path).resolve() == Path(launch[0]).resolve():
        return ["mcp-guard"], config_arg, True
    local = inside(Path(launch[0])) if len(launch) == 1 else None
    return ([local], config_arg, True) if local else (launch, config_arg, False)


def _roots(config: UpstreamConfig) -> list[str]:
    """The directories a server was given as arguments (where its files live), absolute."""
    base = Path(config.cwd or ".")
    out = []
    for a in config.args:
        p = Path(a) if Path(a).is_absolute() else base / a
        if not a.startswith("-") and p.is_dir():
            out.append(str(p.resolve()))
    return out


def _write(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text``; a ``private`` file (it holds the servers' env) is 0600 from its first byte."""
    if not private:
        path.write_text(text, encoding="utf-8")
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file (--force) keeps no wider mode
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _show(p: Path) -> str:
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return str(p)
    return rel if not rel.startswith("../..") else str(p)


def _summary(tools: list[StartingTool]) -> str:
    counts = {e: sum(1 for t in tools if t.effect is e) for e in Effect}
    return f"{counts[Effect.ALLOW]} allowed, {counts[Effect.APPROVE]} need approval, {counts[Effect.DENY]} denied"


COMMANDS: list[click.Command] = [init]
