"""CLI: ``mcp-guard pin`` — record or refresh the upstream tool definitions in the lock file."""

from __future__ import annotations

import asyncio
import sys

import click

from mcp_guard.config import load_config
from mcp_guard.errors import GuardError
from mcp_guard.pinning import PinSet, diff, read_lock, write_lock


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="guard.yaml")
@click.option("--update", is_flag=True, help="Accept new and changed tools into the existing lock file.")
def pin(config_path: str, update: bool) -> None:
    """Record every upstream tool's definition hash in the lock file (default guard.lock).

    Without a lock file, everything is recorded.  With one, the differences are shown and the exit
    code is 1 if there are any, until --update accepts them.
    """
    from mcp_guard.cli.run import setup_logging
    from mcp_guard.upstreams.collect import collect_tools

    setup_logging("WARNING")
    config = load_config(config_path)
    if config.lock_file is None:
        raise GuardError("no lock file configured")
    current = read_lock(config.lock_file)
    tools, failed = asyncio.run(collect_tools(config))
    for _name, why in sorted(failed.items()):
        click.echo(f"warning: {why}; its pins are kept as they were", err=True)
    accepted, changes = diff(current or PinSet(), tools)
    for label, names in (("new", changes.new), ("changed", changes.changed), ("removed", changes.removed)):
        for n in names:
            click.echo(f"{label:8} {n}")
    count = sum(len(t) for t in tools.values())
    if current is None or update:
        write_lock(config.lock_file, accepted)
        click.echo(f"{config.lock_file}: {count} tools of {len(tools)} upstreams pinned")
        sys.exit(1 if failed and current is None else 0)
    if changes.empty:
        click.echo(f"{config.lock_file}: up to date ({count} tools)")
        return
    click.echo(f"{config.lock_file}: not changed; run `mcp-guard pin --config {config_path} --update` to accept")
    sys.exit(1)


COMMANDS: list[click.Command] = [pin]
