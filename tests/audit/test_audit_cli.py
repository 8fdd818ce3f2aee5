"""``mcp-guard audit verify`` and ``mcp-guard audit tail``, run as the real command."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mcp_guard.audit import AuditLog, args_hash

MCP_GUARD = str(Path(sys.executable).with_name("mcp-guard"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MCP_GUARD, "audit", *args], capture_output=True, text=True, timeout=60)


def _log(path: Path, n: int = 5, **kwargs: object) -> list[str]:
    with AuditLog(str(path), **kwargs) as log:  # type: ignore[arg-type]
        out = [
            log.append({
                "session": "s1",
                "principal": ["user:alice@example.com", "agent:planner", "agent:coder"],
                "verified": True,
                "purpose": "ticket-triage",
                "grant_id": "jti-3",
                "upstream": "fs",
                "tool": "write_file",
                "args_sha256": args_hash({"path": f"/srv/tickets/{i}.md"}),
                "decision": "approved" if i % 2 else "deny",
                "policy_ids": ["support-tickets"],
                "reason": None if i % 2 else "mcp-guard denied fs/write_file: args.path must be under /srv/tickets (policy support-tickets)",
                "approver": "bob@host" if i % 2 else None,
                **({"approval": {"channel": "queue", "answer": "approve", "wait_s": 4.2, "id": "3fa9c2d1"}} if i % 2 else {}),
            })
            for i in range(n)
        ]
    return out


def test_verify_ok_prints_count_and_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = _log(path)
    r = _run("verify", str(path))
    assert r.returncode == 0, r.stderr
    assert "5 records" in r.stdout
    assert f"head {hashes[-1]}" in r.stdout


def test_verify_names_the_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"deny"', '"allow"')
    path.write_text("".join(lines))
    r = _run("verify", str(path))
    assert r.returncode == 1
    assert r.stdout.strip() == f"{path}:3: record content does not match its hash (record edited)"
    assert "Traceback" not in r.stderr


def test_verify_rotated_set_and_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = _log(path, 30, max_bytes=2500)
    r = _run("verify", str(path))
    assert r.returncode == 0 and "30 records in" in r.stdout and hashes[-1] in r.stdout


def test_verify_torn_tail_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path)
    with open(path, "ab") as f:
        f.write(b'{"decision":"al')
    r = _run("verify", str(path))
    assert r.returncode == 0 and "5 records" in r.stdout
    assert "torn final record" in r.stderr


def test_verify_missing_file_is_one_sentence(tmp_path: Path) -> None:
    r = _run("verify", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("mcp-guard: cannot read the audit log") and "Traceback" not in r.stderr


def test_tail_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 6)
    r = _run("tail", str(path), "-n", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    deny, approved = lines
    assert "deny" in deny and "user:alice@example.com > agent:planner > agent:coder" in deny
    assert "fs/write_file" in deny and "[support-tickets]" in deny and "args.path must be under /srv/tickets" in deny
    assert "approved" in approved and "approver bob@host via queue after 4.2s" in approved
    assert "for ticket-triage" in approved


def test_tail_follow_shows_new_decisions(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 1)
    proc = subprocess.Popen([MCP_GUARD, "audit", "tail", str(path), "--follow"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "fs/write_file" in proc.stdout.readline()
        time.sleep(0.3)
        with AuditLog(str(path)) as log:
            log.append({"decision": "rejected", "upstream": "tickets", "tool": "close", "principal": ["user:bob"]})
        line = proc.stdout.readline()
        assert "rejected" in line and "tickets/close" in line and "user:bob" in line
    finally:
        proc.terminate()
        proc.wait(timeout=10)
