"""CLI: ``mcp-guard audit verify FILE`` and ``mcp-guard audit tail FILE``."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import click

from mcp_guard.audit import format_record, parse_record, read_tail, verify
from mcp_guard.errors import AuditError


@click.group("audit")
def audit() -> None:
    """Check and read the hash-chained audit log."""


@audit.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--after", default=None, metavar="HASH",
              help="The chain may start after this hash (older rotated files were pruned on purpose).")
def verify_cmd(file: str, after: str | None) -> None:
    """Verify the hash chain of FILE (and FILE.1, FILE.2, … if rotated).

    Exit 0 printing the record count and the head hash (anchor it elsewhere to detect truncation);
    exit 1 printing FILE:LINE: reason for the first bad line.
    """
    if not os.path.exists(file) and not os.path.exists(f"{file}.1"):
        raise AuditError(f"cannot read the audit log {file}: no such file")
    result = verify(file, after=after)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not result.ok:
        where = f"{result.file}:{result.first_bad_line}" if result.first_bad_line else f"{result.file}"
        click.echo(f"{where}: {result.reason}")
        sys.exit(1)
    files = f" in {len(result.files)} files" if len(result.files) > 1 else ""
    click.echo(f"ok: {result.records} records{files}, chain intact")
    click.echo(f"head {result.head_hash}")


@audit.command("tail")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-n", "--lines", "count", default=20, show_default=True, help="How many recent decisions.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new decisions as they are written.")
def tail_cmd(file: str, count: int, follow: bool) -> None:
    """Show recent decisions readably: time, decision, principal chain, tool, policies, reason, approver."""
    for record in read_tail(file, count):
        click.echo(format_record(record))
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            _follow(file)


def _follow(path: str, interval: float = 0.25) -> None:
    """Poll for appended lines; reopen from the start when the file is rotated or truncated."""
    f = open(path, "rb")  # noqa: SIM115 - replaced on rotation, closed in finally
    try:
        f.seek(0, os.SEEK_END)
        ino = os.fstat(f.fileno()).st_ino
        partial = b""
        while True:
            chunk = f.read()
            if chunk:
                partial = _emit(partial + chunk)
                continue
            time.sleep(interval)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_ino != ino or st.st_size < f.tell():
                _emit(partial + f.read() + b"\n")  # what was written before the rotation
                f.close()
                f = open(path, "rb")  # noqa: SIM115
                ino = os.fstat(f.fileno()).st_ino
                partial = b""
    finally:
        f.close()


def _emit(data: bytes) -> bytes:
    """Print the complete lines of ``data``; return the incomplete rest."""
    *lines, rest = data.split(b"\n")
    for raw in lines:
        if raw.strip() and (record := parse_record(raw)) is not None:
            click.echo(format_record(record))
    return rest


COMMANDS: list[click.Command] = [audit]
