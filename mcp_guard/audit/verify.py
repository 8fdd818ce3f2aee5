"""Reading the audit log: checking its chain (``verify``), its last records (``read_tail``), every
record (``iter_records``) and one line a person can read (``format_record``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_guard.audit.encoding import GENESIS, parse_record, record_hash
from mcp_guard.audit.log import TAIL_CHUNK
from mcp_guard.errors import AuditError


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :func:`verify`.  ``first_bad_line`` is 1-based within ``file``."""

    ok: bool
    records: int
    first_bad_line: int | None
    reason: str | None
    head_hash: str
    file: str | None = None
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def rotated_set(path: str) -> list[str]:
    """``FILE.N`` … ``FILE.1``, ``FILE``: the files of a rotated log, oldest first (those that exist).

    Numbers may have gaps: a writer killed while shifting files leaves e.g. ``.4 .2 .1``, still in
    order, and the next rotation closes the gap.
    """
    p = Path(path)
    numbered: list[tuple[int, str]] = []
    if p.parent.is_dir():
        prefix = p.name + "."
        for entry in os.scandir(p.parent):
            suffix = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            if suffix.isdigit() and not suffix.startswith("0"):
                numbered.append((int(suffix), os.path.join(os.path.dirname(path), entry.name)))
    older = [name for _, name in sorted(numbered, reverse=True)]
    return [*older, path] if os.path.exists(path) or not older else older


def verify(path: str, *, after: str | None = None) -> VerifyResult:
    """Check the chain of ``path`` and of its rotated predecessors (``path.N`` … ``path.1``).

    The oldest record must chain to ``GENESIS``, or to ``after`` when older files were pruned on
    purpose (pass the head hash anchored before pruning).  A final line that is cut short (no
    newline, not a JSON object) is a *torn tail* left by a crashed writer: reported in
    ``warnings``, not as tampering, because the call it described was never forwarded.
    """
    files = rotated_set(path)
    expected = GENESIS
    head = GENESIS
    count = 0
    warnings: list[str] = []
    for fi, name in enumerate(files):
        try:
            f = open(name, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            return VerifyResult(False, count, None, f"cannot read: {_describe(exc)}", head, name, tuple(files))
        with f:
            for lineno, raw in enumerate(f, 1):
                record = parse_record(raw)
                if record is None and not raw.endswith(b"\n") and fi == len(files) - 1:
                    warnings.append(
                        f"{name}:{lineno}: torn final record (incomplete write by a crashed writer; "
                        "the call it described was not forwarded), ignored"
                    )
                    break
                reason = _check(record, raw, expected, first=count == 0, after=after)
                if reason is not None:
                    if reason == _CHAIN:
                        reason = _chain_reason(files, str(record.get("prev") if record else ""), name, lineno, count == 0)
                    return VerifyResult(False, count, lineno, reason, head, name, tuple(files), tuple(warnings))
                assert record is not None
                expected = head = str(record["hash"])
                count += 1
    return VerifyResult(True, count, None, None, head, None, tuple(files), tuple(warnings))


_CHAIN = "chain"


def _check(record: dict[str, Any] | None, raw: bytes, expected: str, *, first: bool, after: str | None) -> str | None:
    """None if ``record`` is intact and chains to ``expected``; else why not (``_CHAIN``: the link)."""
    if record is None:
        return "empty line inserted" if not raw.strip() else "not a JSON object (line edited or inserted)"
    digest = record.get("hash")
    if not isinstance(digest, str) or "prev" not in record:
        return "record has no `hash` or `prev` (line inserted or edited)"
    if record_hash(record) != digest:
        return "record content does not match its hash (record edited)"
    prev = record["prev"]
    if prev == expected or (first and after is not None and prev == after):
        return None
    return _CHAIN


def _chain_reason(files: list[str], prev: str, name: str, lineno: int, first: bool) -> str:
    """Say where ``prev`` points, to tell removal from reordering (a rare second pass)."""
    if first:
        return (
            "the first record continues an earlier chain, but no earlier record is present "
            "(records removed from the start, or older rotated files pruned: pass --after HASH)"
        )
    base = "chain broken: `prev` is not the hash of the record before it"
    where = _find_hash(files, prev)
    if where is None:
        return f"{base} (records removed or inserted before this line)"
    wname, wline = where
    at = f"line {wline}" if wname == name else f"{wname}:{wline}"
    if (files.index(wname), wline) > (files.index(name), lineno):
        return f"{base}; it chains to {at}, which comes later (records reordered)"
    return f"{base}; it chains to {at} (records removed, inserted or reordered in between)"


def _find_hash(files: list[str], digest: str) -> tuple[str, int] | None:
    needle = f'"hash":"{digest}"'.encode()
    for name in files:
        try:
            with open(name, "rb") as f:
                for i, raw in enumerate(f, 1):
                    if needle in raw and (rec := parse_record(raw)) is not None and rec.get("hash") == digest:
                        return name, i
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------- reading


def read_tail(path: str, n: int) -> list[dict[str, Any]]:
    """The last ``n`` parseable records of ``path`` (torn or foreign lines are skipped)."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            data = b""
            while end > 0 and data.count(b"\n") <= n:
                step = min(TAIL_CHUNK, end)
                f.seek(end - step)
                data = f.read(step) + data
                end -= step
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path}: {_describe(exc)}") from None
    lines = data.split(b"\n")
    if end > 0:
        lines = lines[1:]  # the first piece may be the end of an older line
    records = [rec for raw in lines if raw.strip() and (rec := parse_record(raw)) is not None]
    return records[-n:] if n > 0 else []


def iter_records(path: str) -> Iterator[dict[str, Any]]:
    """Every parseable record of ``path`` and its rotated predecessors, oldest first (torn or
    foreign lines are skipped: run :func:`verify` first to know the chain is intact)."""
    for name in rotated_set(path):
        try:
            f = open(name, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {name}: {_describe(exc)}") from None
        with f:
            for raw in f:
                if raw.strip() and (record := parse_record(raw)) is not None:
                    yield record


def format_record(record: Mapping[str, Any]) -> str:
    """One line a person can read: time, decision, chain, upstream/tool, policies, reason, approver."""
    time = str(record.get("time", "?"))
    if "T" in time:
        time = time.replace("T", " ")[:19] + "Z"
    decision = str(record.get("decision", "?"))
    chain = record.get("principal")
    who = " > ".join(str(c) for c in chain) if isinstance(chain, list) and chain else "?"
    if record.get("verified") is False:
        who += " (self-asserted)"
    if record.get("purpose"):
        who += f" for {record['purpose']}"
    tool = str(record.get("tool", "?"))
    target = f"{record['upstream']}/{tool}" if record.get("upstream") else tool
    parts = [time, f"{decision:<16}", who, target]
    policies = record.get("policy_ids")
    if isinstance(policies, list) and policies:
        parts.append("[" + ", ".join(str(p) for p in policies) + "]")
    if record.get("reason"):
        parts.append(f"| {record['reason']}")
    approval = record.get("approval") if isinstance(record.get("approval"), dict) else {}
    assert isinstance(approval, dict)
    wait = approval.get("wait_s")
    waited = f" after {float(wait):.1f}s" if isinstance(wait, int | float) and not isinstance(wait, bool) else ""
    if record.get("approver"):
        via = f" via {approval['channel']}" if approval.get("channel") else ""
        parts.append(f"(approver {record['approver']}{via}{waited})")
    elif approval.get("answer") and approval.get("answer") != "approve":
        parts.append(f"(approval {approval['answer']}{waited})")
    return "  ".join(parts)
