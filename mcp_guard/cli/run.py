"""CLI: ``mcp-guard run`` — the guard an agent host launches as its MCP server (stdio)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path

import click

from mcp_guard.config import GuardConfig, UpstreamConfig, default_config, load_config
from mcp_guard.errors import ConfigError


def setup_logging(level: str | None) -> None:
    """Logs go to stderr only: in stdio mode stdout belongs to the MCP protocol."""
    name = (level or os.environ.get("MCP_GUARD_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=getattr(logging, name, logging.INFO), format="mcp-guard %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx2", "httpx", "httpcore", "mcp"):  # one line per HTTP request is not news
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def merge_inline(config: GuardConfig, command: tuple[str, ...], name: str, policies: tuple[str, ...]) -> GuardConfig:
    """Fold ``--policies`` and ``-- COMMAND ...`` into the configuration."""
    upstreams = dict(config.upstreams)
    if command:
        if name in upstreams:
            raise ConfigError(f"--name {name}: an upstream with this name is already configured; choose another name")
        upstreams[name] = UpstreamConfig(name=name, command=command[0], args=tuple(command[1:]), cwd=os.getcwd())
    extra = tuple(Path(p).resolve() for p in policies)
    for p in extra:
        if not p.exists():
            raise ConfigError(f"--policies {p}: no such file or directory")
    return dataclasses.replace(config, upstreams=upstreams, policies=config.policies + extra)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="guard.yaml")
@click.option("--policies", multiple=True, type=click.Path(), help="A policy file or directory (repeatable).")
@click.option("--name", default="upstream", show_default=True, help="Namespace of the inline upstream.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default $MCP_GUARD_LOG_LEVEL or INFO).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(config_path: str | None, policies: tuple[str, ...], name: str, log_level: str | None, command: tuple[str, ...]) -> None:
    """Guard MCP servers on stdio: register this command in your agent host.

    \b
    mcp-guard run --config guard.yaml
    mcp-guard run --policies ./policies -- npx -y @modelcontextprotocol/server-filesystem ./workspace
    """
    setup_logging(log_level)
    config = load_config(config_path) if config_path else default_config()
    config = merge_inline(config, command, name, policies)
    if not config.upstreams:
        raise click.UsageError("nothing to guard: give --config with upstreams, or a server command after --")
    from mcp_guard.proxy.guard import run_stdio

    asyncio.run(run_stdio(config))


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="guard.yaml")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option("--allow-origin", multiple=True, help="A browser Origin allowed besides localhost (repeatable).")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default $MCP_GUARD_LOG_LEVEL or INFO).")
def serve(config_path: str, host: str, port: int, allow_origin: tuple[str, ...], log_level: str | None) -> None:
    """Serve the guard over Streamable HTTP at /mcp; callers present grant chains as bearer tokens."""
    setup_logging(log_level)
    config = load_config(config_path)
    if not config.trust.issuers:
        raise ConfigError(f"{config_path}: serve mode needs trust.issuers to verify the bearer grant chains callers present")
    if not config.upstreams:
        raise ConfigError(f"{config_path}: nothing to guard: no upstreams are configured")
    asyncio.run(_serve(config, host, port, allow_origin))


async def _serve(config: GuardConfig, host: str, port: int, allow_origin: tuple[str, ...]) -> None:
    from mcp_guard import telemetry
    from mcp_guard.proxy.guard import ServeSessions, build_context, chain_verifier
    from mcp_guard.transports.http import serve_http

    ctx = await build_context(config)
    verifier = chain_verifier(config)
    try:
        await serve_http(ServeSessions(ctx), verifier, host, port, allow_origin)
    finally:
        await ctx.store.close()
        telemetry.shutdown()


from mcp_guard.demo import demo  # noqa: E402

COMMANDS: list[click.Command] = [run, serve, demo]
