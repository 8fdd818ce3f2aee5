"""The ``mcp-guard`` command line.  Each command family lives in its own module of this package;
this module only assembles them and maps ``GuardError`` to one clear sentence on stderr.

A command's module is imported when that command runs (or ``--help`` lists them all), so
``mcp-guard run`` starts without what only other commands need: the flow index's numpy, the grant
schemas, the report renderer, the approval store client."""

from __future__ import annotations

import sys

import click

from mcp_guard import __version__
from mcp_guard.errors import ConfigError, GuardError

# Each command by the module that defines it (its ``COMMANDS`` list); tests/test_startup_imports.py
# checks that this table and the modules agree.
MODULES: dict[str, str] = {
    "run": "run", "serve": "run", "demo": "run",
    "check": "policy", "explain": "policy", "test": "policy",
    "diff": "diff", "replay": "diff",
    "keygen": "grant", "grant": "grant",
    "audit": "audit", "approvals": "approvals", "pin": "pin", "init": "init",
    "login": "login", "logout": "login", "report": "report", "schema": "schema",
}


def commands_of(module: str) -> list[click.Command]:
    """The commands of one module of this package, imported now."""
    if module == "run":
        from mcp_guard.cli.run import COMMANDS
    elif module == "policy":
        from mcp_guard.cli.policy import COMMANDS
    elif module == "diff":
        from mcp_guard.cli.diff import COMMANDS
    elif module == "grant":
        from mcp_guard.cli.grant import COMMANDS
    elif module == "audit":
        from mcp_guard.cli.audit import COMMANDS
    elif module == "approvals":
        from mcp_guard.cli.approvals import COMMANDS
    elif module == "pin":
        from mcp_guard.cli.pin import COMMANDS
    elif module == "init":
        from mcp_guard.cli.init import COMMANDS
    elif module == "login":
        from mcp_guard.cli.login import COMMANDS
    elif module == "report":
        from mcp_guard.cli.report import COMMANDS
    elif module == "schema":
        from mcp_guard.cli.schema import COMMANDS
    else:
        raise KeyError(module)
    return COMMANDS


class _Group(click.Group):
    """Imports a command's module on first use, and turns every GuardError into
    ``file:line:col`` lines / one sentence and its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in MODULES:
            for command in commands_of(MODULES[cmd_name]):
                self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for line in exc.problems:
                click.echo(line, err=True)
            sys.exit(exc.exit_code)
        except GuardError as exc:
            click.echo(f"mcp-guard: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcp-guard")
def main() -> None:
    """mcp-guard: an MCP gateway that enforces delegated agent authority."""
