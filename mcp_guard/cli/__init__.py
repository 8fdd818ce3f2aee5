"""The ``mcp-guard`` command line.  Each command family lives in its own module of this package;
this module only assembles them and maps ``GuardError`` to one clear sentence on stderr."""

from __future__ import annotations

import sys

import click

from mcp_guard import __version__
from mcp_guard.errors import ConfigError, GuardError


class _Group(click.Group):
    """Turns every GuardError into ``file:line:col`` lines / one sentence and its exit code."""

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


def _register() -> None:
    from mcp_guard.cli import approvals, audit, grant, init, login, pin, policy, run
    from mcp_guard.cli import diff as diff_cli
    from mcp_guard.cli import report as report_cli
    from mcp_guard.cli import schema as schema_cli

    for module in (run, policy, diff_cli, grant, audit, approvals, pin, init, login, report_cli, schema_cli):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
