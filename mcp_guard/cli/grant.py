"""CLI: ``mcp-guard keygen`` and ``mcp-guard grant issue | delegate | inspect | revoke``.

Tokens go to stdout alone (so ``$(mcp-guard grant issue ...)`` works); everything else is for people.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from mcp_guard.config import DEFAULT_AUDIENCE, GuardConfig, load_config, parse_duration
from mcp_guard.errors import GuardError
from mcp_guard.grants import (
    ChainVerifier,
    GrantError,
    delegate,
    inspect_chain,
    issue_grant,
    load_private_key,
    load_public_key,
    thumbprint,
    write_keypair,
)

# --------------------------------------------------------------------------- option helpers


def _read_arg(value: str, what: str) -> str:
    """A literal, ``@file`` or ``-`` (stdin)."""
    if value == "-":
        return sys.stdin.read().strip()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror or exc}", param_hint=what) from None
    return value.strip()


def _tools(values: tuple[str, ...]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def _ttl(value: str, param: str) -> float:
    seconds = parse_duration(value)
    if seconds is None or seconds <= 0:
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 10m, 1h or 2d", param_hint=param)
    return seconds


def _tool_args(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in values:
        pattern, sep, raw = v.partition("=")
        if not sep:
            raise click.BadParameter(f"{v!r} is not UPSTREAM/TOOL=JSON_SCHEMA", param_hint="--arguments")
        try:
            out[pattern.strip()] = json.loads(_read_arg(raw, "--arguments"))
        except ValueError:
            raise click.BadParameter(f"the schema for {pattern} is not valid JSON", param_hint="--arguments") from None
    return out


def _verifier(config: GuardConfig | None, trust: tuple[str, ...], audience: str | None) -> ChainVerifier | None:
    issuers = {}
    if config is not None:
        from mcp_guard.app import issuer_keys

        issuers.update(issuer_keys(config))
    for item in trust:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=KEYFILE", param_hint="--trust")
        issuers[name] = load_public_key(path)
    if config is None and not trust:
        return None
    aud = audience or (config.trust.audience if config is not None else DEFAULT_AUDIENCE)
    return ChainVerifier(issuers, aud)


async def _store_call(state_url: str, action: str, arg: Any) -> Any:
    from mcp_guard.state import open_store  # written concurrently; imported only when needed

    store = open_store(state_url)
    try:
        if action == "revoke":
            return await store.revoke(arg)
        return await store.revoked(arg)
    finally:
        await store.close()


# --------------------------------------------------------------------------- commands


@click.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for the key files.")
@click.option("--force", is_flag=True, help="Replace an existing key pair in DIR.")
def keygen(out: str, force: bool) -> None:
    """Create an Ed25519 key pair: DIR/private.pem (PKCS#8, mode 0600), DIR/public.jwk, DIR/public.pem.

    An issuer's public key goes into guard.yaml's trust.issuers; an agent's public key is passed
    as --agent-key when granting to it, so only that agent can delegate further.
    """
    priv, jwk, pem = write_keypair(out, force=force)
    click.echo(f"wrote {priv} (private; keep it secret)")
    click.echo(f"wrote {jwk}")
    click.echo(f"wrote {pem}")
    click.echo(f"key id: {thumbprint(load_public_key(pem))}")


@click.group()
def grant() -> None:
    """Issue, delegate, inspect and revoke signed grant chains."""


@grant.command("issue")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Issuer private key (PEM).")
@click.option("--issuer", required=True, help="Issuer name, as listed in trust.issuers.")
@click.option("--user", required=True, help="The user whose authority is granted.")
@click.option("--agent", required=True, help="The agent that receives it.")
@click.option("--agent-key", type=click.Path(dir_okay=False), help="The agent's public key (needed to delegate further).")
@click.option("--tools", "tools", multiple=True, help="UPSTREAM/TOOL patterns, comma separated.")
@click.option("--resources", "resources", multiple=True,
              help="UPSTREAM/URI_GLOB patterns, comma separated (* crosses /: docs/* is every resource of docs). Without it: no resources.")
@click.option("--prompts", "prompts", multiple=True, help="UPSTREAM/PROMPT patterns, comma separated. Without it: no prompts.")
@click.option("--purpose", help="What the grant is for (constant down the chain).")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 90s, 10m, 1h, 2d.")
@click.option("--depth", default=0, show_default=True, type=click.IntRange(0, 7), help="Further delegation hops allowed.")
@click.option("--max-calls", type=click.IntRange(0), help="Call budget over all tools (shared by every delegate).")
@click.option("--approve", multiple=True, help="UPSTREAM/TOOL patterns that always need a human's approval.")
@click.option("--arguments", "arguments", multiple=True, help="UPSTREAM/TOOL=JSON_SCHEMA (or =@file) constraining arguments.")
@click.option("--audience", default=DEFAULT_AUDIENCE, show_default=True, help="The guard's trust.audience.")
@click.option("--labels", "labels", multiple=True, help="Labels the holder's sessions start with, comma separated (a child includes its parent's).")
@click.option("--label-ceiling", "label_ceiling", multiple=True, help="The only labels the holder may ever acquire, comma separated (within the parent's).")
@click.option("--endorse", "endorse", multiple=True, help="Values the principal named for this task; they never carry `untrusted`. Repeat for several.")
@click.option("--endorse-source", "endorse_source", multiple=True,
              help="UPSTREAM/TOOL (or a JSON selector {tools: [...], when: {...}}) whose answers bring no `untrusted`. Repeat for several.")
def issue(
    key_path: str, issuer: str, user: str, agent: str, agent_key: str | None, tools: tuple[str, ...],
    resources: tuple[str, ...], prompts: tuple[str, ...], purpose: str | None, ttl: str, depth: int, max_calls: int | None, approve: tuple[str, ...],
    arguments: tuple[str, ...], audience: str, labels: tuple[str, ...], label_ceiling: tuple[str, ...], endorse: tuple[str, ...],
    endorse_source: tuple[str, ...],
) -> None:
    """Mint a root grant signed by an issuer key; prints the token."""
    token = issue_grant(
        load_private_key(key_path), issuer, user, agent, _tools(tools),
        agent_key=load_public_key(agent_key) if agent_key else None, purpose=purpose, ttl=_ttl(ttl, "--ttl"),
        depth=depth, max_calls=max_calls, approve=_tools(approve), audience=audience,
        tool_args=_tool_args(arguments), resources=_tools(resources), prompts=_tools(prompts),
        **_flow(labels, label_ceiling, endorse, endorse_source),
    )
    click.echo(token)


@grant.command("delegate")
@click.option("--chain", "chain", required=True, help="The chain to extend (TOKEN, @file or -).")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Your (the holder's) private key.")
@click.option("--agent", required=True, help="The sub-agent that receives the narrower grant.")
@click.option("--agent-key", type=click.Path(dir_okay=False), help="The sub-agent's public key (needed to delegate further).")
@click.option("--tools", "tools", multiple=True, help="UPSTREAM/TOOL patterns, a subset of yours.")
@click.option("--resources", "resources", multiple=True, help="UPSTREAM/URI_GLOB patterns, a subset of yours. Without it: no resources.")
@click.option("--prompts", "prompts", multiple=True, help="UPSTREAM/PROMPT patterns, a subset of yours. Without it: no prompts.")
@click.option("--ttl", default="10m", show_default=True, help="Lifetime (never beyond the parent's expiry).")
@click.option("--depth", default=0, show_default=True, type=click.IntRange(0, 7), help="Further hops allowed.")
@click.option("--max-calls", type=click.IntRange(0), help="Call budget (at most the parent's; default: the parent's).")
@click.option("--approve", multiple=True, help="Tools that need a human's approval (in addition to the parent's).")
@click.option("--arguments", "arguments", multiple=True, help="UPSTREAM/TOOL=JSON_SCHEMA adding argument constraints.")
@click.option("--labels", "labels", multiple=True, help="Labels the holder's sessions start with, comma separated (a child includes its parent's).")
@click.option("--label-ceiling", "label_ceiling", multiple=True, help="The only labels the holder may ever acquire, comma separated (within the parent's).")
@click.option("--endorse", "endorse", multiple=True, help="Values the principal named for this task; they never carry `untrusted`. Repeat for several.")
@click.option("--endorse-source", "endorse_source", multiple=True,
              help="UPSTREAM/TOOL (or a JSON selector {tools: [...], when: {...}}) whose answers bring no `untrusted`. Repeat for several.")
def delegate_cmd(
    chain: str, key_path: str, agent: str, agent_key: str | None, tools: tuple[str, ...],
    resources: tuple[str, ...], prompts: tuple[str, ...], ttl: str,
    depth: int, max_calls: int | None, approve: tuple[str, ...], arguments: tuple[str, ...],
    labels: tuple[str, ...], label_ceiling: tuple[str, ...], endorse: tuple[str, ...], endorse_source: tuple[str, ...],
) -> None:
    """Append a narrower link for a sub-agent; refuses (naming the field) to widen anything."""
    token = delegate(
        _read_arg(chain, "--chain"), load_private_key(key_path), agent, _tools(tools),
        agent_key=load_public_key(agent_key) if agent_key else None, ttl=_ttl(ttl, "--ttl"), depth=depth,
        max_calls=max_calls, approve=_tools(approve), tool_args=_tool_args(arguments),
        resources=_tools(resources), prompts=_tools(prompts),
        **_flow(labels, label_ceiling, endorse, endorse_source),
    )
    click.echo(token)


def _flow(labels: tuple[str, ...], ceiling: tuple[str, ...], endorse: tuple[str, ...], sources: tuple[str, ...]) -> dict[str, Any]:
    """The flow members of a new link from the command line (an option not given is inherited)."""
    def split(values: tuple[str, ...]) -> tuple[str, ...] | None:
        return tuple(v.strip() for value in values for v in value.split(",") if v.strip()) if values else None

    parsed: list[Any] = []
    for raw in sources:
        try:
            parsed.append(json.loads(raw) if raw.lstrip().startswith("{") else {"tools": [raw.strip()]})
        except ValueError as exc:
            raise click.BadParameter(f"not a JSON selector: {exc}", param_hint="--endorse-source") from None
    return {"labels": split(labels), "label_ceiling": split(ceiling), "endorse": endorse or None, "endorse_sources": parsed or None}


@grant.command("inspect")
@click.argument("token")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="guard.yaml (trust.issuers, audience, state).")
@click.option("--trust", multiple=True, help="NAME=KEYFILE: trust this issuer key (instead of, or besides, --config).")
@click.option("--audience", help="Expected audience (default: the config's, else urn:mcp-guard:local).")
def inspect_cmd(token: str, config_path: str | None, trust: tuple[str, ...], audience: str | None) -> None:
    """Show a chain link by link and verify it; exit 1 if it is invalid."""
    config = load_config(config_path) if config_path else None
    verifier = _verifier(config, trust, audience)
    text = _read_arg(token, "TOKEN")
    report = inspect_chain(text, verifier)
    notes: list[str] = []
    if report.ok and report.chain is not None and config is not None:
        try:
            revoked = asyncio.run(_store_call(config.state_url, "revoked", list(report.chain.link_ids)))
        except (GuardError, ImportError, OSError) as exc:
            notes.append(f"note: revocations not checked ({exc})")
        else:
            if revoked:
                report = inspect_chain(text, verifier, revoked={revoked})
    click.echo(report.render())
    for note in notes:
        click.echo(note)
    if report.error is not None:
        raise GrantError(report.error.code, f"the grant chain is invalid ({report.error.code}): {report.error}")


@grant.command("revoke")
@click.argument("grant_id")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="guard.yaml (its state store).")
def revoke(grant_id: str, config_path: str) -> None:
    """Revoke a link by id (see `grant inspect`); it and every link delegated from it stop working
    on the next call of every guard sharing the state store."""
    config = load_config(config_path)
    grant_id = grant_id.strip()
    if not grant_id or "." in grant_id or "~" in grant_id:
        raise click.BadParameter("give a link id as printed by `mcp-guard grant inspect`, not a token", param_hint="GRANT_ID")
    asyncio.run(_store_call(config.state_url, "revoke", grant_id))
    click.echo(f"revoked {grant_id} and every link delegated from it")


COMMANDS: list[click.Command] = [keygen, grant]
