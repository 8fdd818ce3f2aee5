"""CLI: ``mcp-guard run`` — the guard an agent host launches as its MCP server (stdio)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mcp_guard.config import (
    UPSTREAM_NAME,
    GuardConfig,
    IdentityConfig,
    UpstreamConfig,
    check_grant_variable,
    default_config,
    load_config,
    policy_sources,
)
from mcp_guard.errors import ConfigError
from mcp_guard.logs import setup_logging as setup_logging  # re-exported: other commands import it from here
from mcp_guard.upstreams.naming import inline_upstream_name

if TYPE_CHECKING:
    from mcp_guard.policy import Parsed


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the guard (``run`` and ``serve``) on uvloop where it is installed (Linux, macOS): its
    event loop is written in C, and the per-message loop work (wake-ups, callbacks, pipe and
    socket reads and writes) is a fifth of the guard's CPU per call on the standard loop
    (docs/performance.md)."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the standard loop
        asyncio.run(main)
        return
    uvloop.run(main)


def merge_inline(config: GuardConfig, command: tuple[str, ...], name: str | None, policies: tuple[str, ...],
                 identity: IdentityConfig | None = None) -> tuple[GuardConfig, Parsed | None]:
    """Fold ``--policies``, ``--user/--agent/--purpose`` and ``-- COMMAND ...`` into the configuration.

    Without ``--name`` the inline upstream is named after its command (``inline_upstream_name``),
    which needs the policies read first: they are returned parsed, so the guard does not read
    and parse them a second time (None when they were not read)."""
    parsed: Parsed | None = None
    upstreams = dict(config.upstreams)
    extra = tuple(Path(p).resolve() for p in policies)
    for p in extra:
        if not p.exists():
            raise ConfigError(f"--policies {p}: no such file or directory")
    all_policies = config.policies + extra
    if command:
        if name is None:
            parsed = parse_policies(all_policies)
            name = inline_upstream_name(command, parsed.tool_upstreams() if parsed is not None else set())
            if name in upstreams:
                name = "upstream" if "upstream" not in upstreams else name
        if name in upstreams:
            raise ConfigError(f"--name {name}: an upstream with this name is already configured; choose another name")
        if not UPSTREAM_NAME.fullmatch(name):
            raise ConfigError(f"--name {name}: an upstream name must match [A-Za-z0-9_-]{{1,32}}")
        upstreams[name] = UpstreamConfig(name=name, command=command[0], args=tuple(command[1:]), cwd=os.getcwd())
    ident = config.identity
    if identity is not None:
        ident = IdentityConfig(
            user=identity.user or ident.user,
            agent=identity.agent or ident.agent,
            purpose=identity.purpose or ident.purpose,
            grant=ident.grant,
        )
    return dataclasses.replace(config, upstreams=upstreams, policies=all_policies, identity=ident), parsed


def parse_policies(paths: tuple[Path, ...]) -> Parsed | None:
    """The policies parsed once, before the upstream names are known (None when a file cannot be
    read: the guard reports that when it loads the policies)."""
    from mcp_guard.policy import parse_sources

    try:
        return parse_sources(policy_sources(paths))
    except ConfigError:
        return None


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="guard.yaml")
@click.option("--policies", multiple=True, type=click.Path(), help="A policy file or directory (repeatable).")
@click.option("--name", default=None, metavar="NAME",
              help="Upstream name of the inline server: its tools are NAME/TOOL in policies and NAME_TOOL to the "
                   "agent.  Default: derived from the command (server-filesystem -> filesystem, mcp-server-time -> "
                   "time), or `upstream` when the command says too little or the policies were written for `upstream`.")
@click.option("--user", default=None, help="The user the agent acts for (default: the config's identity.user, then $USER).")
@click.option("--agent", default=None, help="The acting agent (default: the config's identity.agent, then the host's clientInfo.name).")
@click.option("--purpose", default=None, help="The session's purpose, matched by policies' subjects.purposes.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default $MCP_GUARD_LOG_LEVEL or INFO).")
@click.option("--log-format", default=None, type=click.Choice(["text", "json"], case_sensitive=False),
              help="text, or json: one JSON object a line with trace and span ids (default $MCP_GUARD_LOG_FORMAT or text).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(config_path: str | None, policies: tuple[str, ...], name: str | None, user: str | None, agent: str | None,
        purpose: str | None, log_level: str | None, log_format: str | None, command: tuple[str, ...]) -> None:
    """Guard MCP servers on stdio: register this command in your agent host.

    Stdout carries only MCP messages; logs and refusals go to stderr.  The identity flags are
    self-asserted, like identity in guard.yaml; a signed grant (identity.grant or
    $MCP_GUARD_GRANT) decides the identity when present.

    \b
    mcp-guard run --config guard.yaml
    mcp-guard run --policies ./policies --purpose code-review -- mcp-server-filesystem ./workspace
        (the inline server is named `filesystem`: policies say filesystem/read_text_file)
    mcp-guard run --name fs --policies ./policies -- npx -y @modelcontextprotocol/server-filesystem ./workspace
    """
    setup_logging(log_level, log_format)
    config = load_config(config_path) if config_path else default_config()
    check_grant_variable(config)
    config, parsed = merge_inline(config, command, name, policies, IdentityConfig(user=user, agent=agent, purpose=purpose))
    if not config.upstreams:
        raise click.UsageError("nothing to guard: give --config with upstreams, or a server command after --")
    from mcp_guard.app import run_stdio

    run_loop(run_stdio(config, parsed))


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="guard.yaml")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option("--allow-origin", multiple=True, help="A browser Origin allowed besides localhost (repeatable).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Guard processes sharing the port (SO_REUSEPORT) and the configured state store.")
@click.option("--reuse-port", is_flag=True, help="Share the port with other `serve` processes on this host (replicas).")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default $MCP_GUARD_LOG_LEVEL or INFO).")
@click.option("--log-format", default=None, type=click.Choice(["text", "json"], case_sensitive=False),
              help="text, or json: one JSON object a line with trace and span ids (default $MCP_GUARD_LOG_FORMAT or text).")
def serve(config_path: str, host: str, port: int, allow_origin: tuple[str, ...], workers: int, reuse_port: bool,
          log_level: str | None, log_format: str | None) -> None:
    """Serve the guard over Streamable HTTP at /mcp; callers present OAuth access tokens (serve.oauth)
    or grant chains (trust.issuers) as bearer tokens."""
    setup_logging(log_level, log_format)
    config = load_config(config_path)
    if not config.trust.issuers and not config.serve.oauth:
        raise ConfigError(f"{config_path}: serve mode needs serve.oauth (OAuth access tokens) or trust.issuers (grant chains) to know its callers")
    if not config.upstreams:
        raise ConfigError(f"{config_path}: nothing to guard: no upstreams are configured")
    if (workers > 1 or reuse_port) and config.state_url.startswith("memory://"):
        raise ConfigError(f"{config_path}: state.url memory:// lives in one process; --workers and --reuse-port need a "
                          "shared store (sqlite:// or redis://) so budgets, limits and revocations hold across processes")
    from mcp_guard.app import run_serve

    if workers == 1:
        run_loop(run_serve(config, host, port, allow_origin, reuse_port))
        return
    import secrets

    from mcp_guard.serve.workers import run_workers

    if config.approvals.state_key is None:  # every worker must open the approval state another sealed
        config = dataclasses.replace(config, approvals=dataclasses.replace(config.approvals, state_key=secrets.token_hex(32)))
    raise SystemExit(run_workers(workers, lambda: run_loop(run_serve(config, host, port, allow_origin, True))))


from mcp_guard.demo import demo  # noqa: E402

COMMANDS: list[click.Command] = [run, serve, demo]
