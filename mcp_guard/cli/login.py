"""CLI: ``mcp-guard login`` / ``logout`` — the guard's own authorization at an HTTP upstream.

``login`` runs the interactive flow ahead of time, so a host that starts ``mcp-guard run`` later
never waits on a browser; ``logout`` forgets what was stored.
"""

from __future__ import annotations

import asyncio

import click

from mcp_guard.config import GuardConfig, UpstreamConfig, has_browser, load_config
from mcp_guard.errors import ConfigError

_config_option = click.option("--config", "config_path", default="guard.yaml", show_default=True,
                              type=click.Path(dir_okay=False), help="guard.yaml")


def _upstream(config: GuardConfig, name: str, config_path: str) -> UpstreamConfig:
    up = config.upstreams.get(name)
    if up is None:
        from mcp_guard.yamlsrc import did_you_mean

        hint = did_you_mean(name, tuple(config.upstreams))
        raise ConfigError(f"{config_path}: no upstream named `{name}`" + (f" ({hint})" if hint else ""))
    if up.auth is None or up.token_file is None:
        raise ConfigError(f"{config_path}: upstream `{name}` has no `auth: oauth` or `auth: client_credentials` to log in with")
    return up


@click.command()
@click.argument("upstream")
@_config_option
@click.option("--timeout", "wait", default="5m", show_default=True, help="How long to wait for the browser (30s, 5m).")
def login(upstream: str, config_path: str, wait: str) -> None:
    """Authorize the guard at an HTTP upstream now and store its tokens (encrypted, for this user).

    Prints the authorization URL, opens it in $BROWSER or the desktop's browser when there is one,
    and waits for the authorization server's redirect to a loopback address on this machine.
    """
    from mcp_guard.cli.run import setup_logging
    from mcp_guard.config import parse_duration
    from mcp_guard.upstreams.oauth import login as run_login

    setup_logging("WARNING")
    seconds = parse_duration(wait)
    if seconds is None:
        raise click.BadParameter("must be a duration such as 30s or 5m", param_hint="--timeout")
    up = _upstream(load_config(config_path), upstream, config_path)
    tokens = asyncio.run(run_login(up, lambda text: click.echo(text, err=True), seconds, open_browser=has_browser()))
    expiry = f", expires in {tokens.expires_in}s" if tokens.expires_in else ""
    refresh = ", refreshable" if tokens.refresh_token else ""
    scope = f" for scope `{tokens.scope}`" if tokens.scope else ""
    click.echo(f"logged in to {upstream}{scope}{expiry}{refresh}; stored in {up.token_file}")


@click.command()
@click.argument("upstream")
@_config_option
def logout(upstream: str, config_path: str) -> None:
    """Forget the tokens (and client registration) stored for an upstream."""
    from mcp_guard.upstreams.oauth import logout as run_logout

    up = _upstream(load_config(config_path), upstream, config_path)
    if run_logout(up):
        click.echo(f"logged out of {upstream}: removed {up.token_file}")
    else:
        click.echo(f"nothing stored for {upstream}")


COMMANDS: list[click.Command] = [login, logout]
