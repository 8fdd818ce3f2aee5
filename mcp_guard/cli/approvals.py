"""CLI: ``mcp-guard approvals list | approve ID | reject ID`` — answer held calls from another terminal.

The queue lives in the configured state store, so this works against a running guard that shares
it (the sqlite default on the same machine, or Redis)."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from mcp_guard.config import default_config, load_config, resolve_state_url
from mcp_guard.errors import GuardError
from mcp_guard.invisible import marked
from mcp_guard.state import PENDING, StateStore, open_store

T = TypeVar("T")

_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="guard.yaml whose state store holds the queue (default: ./.mcp-guard/state.db in the current directory).",
)
_state_option = click.option(
    "--state", "state_url", default=None, metavar="URL",
    help="State store URL, e.g. sqlite:////abs/path/state.db or redis://host:6379/0 (overrides --config).",
)


def _state_url(config_path: str | None, state_url: str | None) -> str:
    if state_url:
        return resolve_state_url(state_url, Path.cwd())
    if config_path:
        return load_config(config_path).state_url
    return default_config().state_url


def _existing_store(url: str) -> None:
    """A sqlite queue that does not exist yet holds no request: refuse rather than create a stray
    database somewhere the running guard does not look."""
    if not url.startswith("sqlite://"):
        return
    from mcp_guard.state.sqlite import has_holders, sqlite_path

    path = sqlite_path(url)
    if not path.exists() and not has_holders(path):
        # (with guards recorded as holders, opening the store says which guard lost its file)
        raise GuardError(
            f"there is no state store at {path}: no guard has used it, so it holds no approval request; "
            "give --config with the running guard's guard.yaml, or --state with the URL its hint printed"
        )


def _with_store(url: str, work: Callable[[StateStore], Awaitable[T]]) -> T:
    _existing_store(url)

    async def go() -> T:
        store = open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def default_approver() -> str:
    """``$USER@hostname``: who answered, as recorded in the audit log."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _age(created: Any) -> str:
    if not isinstance(created, int | float):
        return "?"
    seconds = max(0, int(time.time() - created))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _who(record: dict[str, Any]) -> str:
    chain = record.get("principal")
    who = " > ".join(str(c) for c in chain) if isinstance(chain, list) and chain else "?"
    return who + (f" for {record['purpose']}" if record.get("purpose") else "")


def _target(record: dict[str, Any]) -> str:
    tool = str(record.get("tool", "?"))
    return f"{record['upstream']}/{tool}" if record.get("upstream") else tool


def describe(record: dict[str, Any]) -> str:
    """Two lines a person can judge: id, age, status, who, tool; then the arguments preview.  Every
    invisible, control or reordering character of what the caller or upstream chose is shown as
    ``⟨U+XXXX⟩`` (as on the approval page), so a bidi override cannot turn the line around."""
    head = f"{record['id']}  {_age(record.get('created')):>4}  {record.get('status', '?'):<8}  {_target(record)}  {_who(record)}"
    if record.get("status") not in (None, PENDING) and record.get("approver"):
        head += f"  (by {record['approver']}" + (f": {record['reason']}" if record.get("reason") else "") + ")"
    head = marked(head)
    preview = record.get("args_preview")
    if preview is None and "args" in record:
        preview = orjson.dumps(record["args"]).decode()
    if preview:
        text = preview if isinstance(preview, str) else orjson.dumps(preview).decode()
        head += "\n          args: " + marked(text if len(text) <= 400 else text[:399] + "…")
    return head


@click.group("approvals")
def approvals() -> None:
    """The approval queue: calls waiting for a human.

    A call whose rule says `effect: approve` waits in the guard's state store (when the host cannot
    ask you itself); the guard's log names the request and the exact command to answer it.  Give
    the same --config (or --state) as the running guard: the commands refuse a state file that does
    not exist rather than create an empty one.
    """


@approvals.command("list")
@_config_option
@_state_option
@click.option("--all", "show_all", is_flag=True, help="Include answered and expired requests.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_cmd(config_path: str | None, state_url: str | None, show_all: bool, as_json: bool) -> None:
    """Show the requests waiting for an answer (oldest first)."""
    url = _state_url(config_path, state_url)
    records = _with_store(url, lambda s: s.approval_list(pending_only=not show_all))
    if as_json:
        for r in records:
            click.echo(orjson.dumps(r).decode())
        return
    if not records:
        click.echo("no pending approval requests" if not show_all else "no approval requests")
        return
    for r in records:
        click.echo(describe(r))


def _answer(approved: bool, approval_id: str, config_path: str | None, state_url: str | None,
            reason: str | None, approver: str | None) -> None:
    url = _state_url(config_path, state_url)
    who = approver or default_approver()

    async def work(store: StateStore) -> tuple[bool, dict[str, Any] | None]:
        done = await store.approval_resolve(approval_id, approved, who, reason)
        return done, await store.approval_get(approval_id)

    done, record = _with_store(url, work)
    verb = "approved" if approved else "rejected"
    if record is None:
        raise GuardError(f"there is no approval request {approval_id} in {url}")
    if not done:
        status = record.get("status")
        if status == "expired":
            raise GuardError(f"approval request {record['id']} has expired; the call was refused")
        by = f" by {record['approver']}" if record.get("approver") else ""
        raise GuardError(f"approval request {record['id']} was already {status}{by}")
    click.echo(marked(f"{verb} {record['id']}: {_target(record)} for {_who(record)}"))


def _answer_command(name: str, approved: bool, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("approval_id", metavar="ID")
    @_config_option
    @_state_option
    @click.option("--reason", default=None, help="Why (recorded in the audit log and shown to the agent).")
    @click.option("--as", "approver", default=None, metavar="NAME", help="Approver name (default: $USER@hostname).")
    def command(approval_id: str, config_path: str | None, state_url: str | None, reason: str | None,
                approver: str | None) -> None:
        _answer(approved, approval_id, config_path, state_url, reason, approver)

    return command


approvals.add_command(_answer_command("approve", True, "Let the waiting call ID through (once)."))
approvals.add_command(_answer_command("reject", False, "Refuse the waiting call ID."))

COMMANDS: list[click.Command] = [approvals]
