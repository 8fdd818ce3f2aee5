"""The records a real ``mcp-guard run`` writes for its calls: allowed calls take the record template
(fixed fields encoded once per principal, target and verdict), refusals the record built field by
field; either way every line is the reference canonical JSON plus its hash, and one chain."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fixtures import RecordFile, guarded_session, recording_server_command, stdio_upstream, write_guard_config

from mcp_guard.audit import args_hash, verify

pytestmark = pytest.mark.e2e

POLICY: list[dict[str, Any]] = [{"id": "notes", "rules": [
    {"effect": "allow", "tools": ["rec/*"]},
    {"effect": "deny", "tools": ["rec/write_note"], "when": {"args.path": {"under": "/etc"}},
     "reason": "Notes are read-only here"},
]}]

ALLOWED_FIELDS = {"agent", "approver", "args_sha256", "decision", "exposed", "grant_id", "hash", "kind", "method", "pid",
                  "policy_ids", "prev", "principal", "purpose", "reason", "rule_ids", "session", "time", "tool", "upstream",
                  "user", "verified"}


def _reference_line(raw: str) -> str:
    """The line the reference encoder writes for this record: canonical JSON without ``hash``, then ``hash``."""
    record = json.loads(raw)
    digest = record.pop("hash")
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(body.encode()).hexdigest() == digest
    return body[:-1] + f',"hash":"{digest}"}}'


async def test_every_record_is_the_reference_encoding_and_one_chain(tmp_path: Path) -> None:
    record = RecordFile(tmp_path / "received.jsonl")
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record.env())}, POLICY,
                                audit={"path": str(tmp_path / "audit.jsonl")})
    sent: list[dict[str, Any]] = []
    for session in range(2):  # a process each: the second chains to the first's records
        async with guarded_session(config, stderr=tmp_path / f"guard-{session}.log") as client:
            for i in range(3):
                args = {"text": f"héllo \"{i}\"\n", "n": i} if i else {"text": "plain"}
                result = await client.session.call_tool("rec_echo", args)
                assert result.is_error is False
                sent.append(args)
            await client.session.call_tool("rec_read_note", {"path": "/srv/a.md"})
            sent.append({"path": "/srv/a.md"})
            refused = await client.session.call_tool("rec_write_note", {"path": "/etc/x", "text": "no"})
            assert refused.is_error is True
            sent.append({"path": "/etc/x", "text": "no"})
    lines = (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 10
    assert [line == _reference_line(line) for line in lines] == [True] * 10
    assert [r["args_sha256"] for r in records] == [args_hash(a) for a in sent]
    assert [r["decision"] for r in records] == ["allow"] * 4 + ["deny"] + ["allow"] * 4 + ["deny"]
    assert [r["tool"] for r in records[:5]] == ["echo", "echo", "echo", "read_note", "write_note"]
    assert records[4]["reason"] is not None and "read-only" in records[4]["reason"]
    assert {r["session"] for r in records[:5]} != {r["session"] for r in records[5:]}
    assert len({r["session"] for r in records[:5]}) == 1 and len({r["pid"] for r in records[5:]}) == 1
    for r in records:
        assert set(r) == ALLOWED_FIELDS
    assert records[0]["exposed"] == "rec_echo" and records[0]["kind"] == "tool" and records[0]["rule_ids"]
    result = verify(str(tmp_path / "audit.jsonl"))
    assert result.ok and result.records == 10
