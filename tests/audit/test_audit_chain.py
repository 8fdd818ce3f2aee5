"""The audit chain: what it records, and that editing, removing, reordering or inserting is caught."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcp_guard.audit import GENESIS, AuditLog, args_hash, canonical, record_hash, verify
from mcp_guard.errors import AuditError

HERE = Path(__file__).parent


def _decision(i: int, **extra: object) -> dict[str, object]:
    return {
        "session": "s1",
        "principal": ["user:alice@example.com", "agent:planner", "agent:coder"],
        "purpose": "ticket-triage",
        "grant_id": "jti-coder",
        "upstream": "fs",
        "tool": "read_text_file",
        "args_sha256": args_hash({"path": f"/srv/tickets/{i}.md"}),
        "decision": "allow",
        "policy_ids": ["support-tickets"],
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        **extra,
    }


def _write(path: Path, n: int, **kwargs: object) -> list[str]:
    with AuditLog(str(path), **kwargs) as log:  # type: ignore[arg-type]
        return [log.append(_decision(i)) for i in range(n)]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


# --------------------------------------------------------------------------- format


def test_records_are_chained_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = _write(path, 3)
    records = [json.loads(line) for line in _lines(path)]
    assert [r["hash"] for r in records] == hashes
    assert [r["prev"] for r in records] == [GENESIS, hashes[0], hashes[1]]
    for r in records:
        body = {k: v for k, v in r.items() if k != "hash"}
        expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
        assert r["hash"] == expected == record_hash(r)
        assert r["time"].endswith("Z") and r["decision"] == "allow"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_given_time_is_kept_and_hash_field_ignored(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(str(path)) as log:
        digest = log.append({"decision": "deny", "time": "2026-01-01T00:00:00Z", "hash": "forged"})
    record = json.loads(path.read_text())
    assert record["time"] == "2026-01-01T00:00:00Z" and record["hash"] == digest


def test_args_hash_is_canonical() -> None:
    a = args_hash({"b": [1, 2, {"y": "é", "x": None}], "a": 1.5})
    assert a == args_hash({"a": 1.5, "b": [1, 2, {"x": None, "y": "é"}]})
    assert a == hashlib.sha256(b'{"a":1.5,"b":[1,2,{"x":null,"y":"\xc3\xa9"}]}').hexdigest()
    assert args_hash(None) == args_hash({})
    assert args_hash({"n": 2**70}) == hashlib.sha256(b'{"n":1180591620717411303424}').hexdigest()
    assert canonical({"k": "v"}) == b'{"k":"v"}'


@pytest.mark.parametrize("value", [1e-05, -2.5e-09, 1e-4, 0.00012, 1e16, 1e22, 2**64, "1e-5", {"x": [1e-7, "é\n"]}])
def test_canonical_is_exactly_the_stdlib_form(value: object) -> None:
    """Anyone can recompute hashes with ``json.dumps``; orjson's float spellings must not leak in."""
    assert canonical(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_chain_resumes_when_the_log_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = _write(path, 2)
    with AuditLog(str(path)) as log:
        assert log.head == first[-1]
        log.append(_decision(9))
    result = verify(str(path))
    assert result.ok and result.records == 3


def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    """Two guards configured with the same audit path interleave without breaking the chain."""
    path = tmp_path / "audit.jsonl"
    a, b = AuditLog(str(path)), AuditLog(str(path))
    for i in range(10):
        (a if i % 3 else b).append(_decision(i))
    a.close()
    b.close()
    result = verify(str(path))
    assert result.ok and result.records == 10, result


def test_two_writer_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "auditproc.py"), str(path), "400", "4000"], stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    result = verify(str(path))
    assert result.ok, result
    assert result.records == 1200 and len(result.files) > 1


def test_stderr_mode_chains_in_memory() -> None:
    code = (
        "from mcp_guard.audit import AuditLog\n"
        "log = AuditLog('-')\n"
        "for i in range(3): print(log.append({'decision': 'allow', 'n': i}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [r["hash"] for r in records] == proc.stdout.split()
    assert records[0]["prev"] == GENESIS and records[2]["prev"] == records[1]["hash"]


def test_disabled_log_still_returns_hashes() -> None:
    log = AuditLog(None)
    assert log.append({"decision": "allow"}) != log.append({"decision": "allow"})


# --------------------------------------------------------------------------- tamper detection


@pytest.fixture
def log10(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write(path, 10)
    assert verify(str(path)).ok
    return path


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def test_edited_record_is_named(log10: Path) -> None:
    lines = _lines(log10)
    lines[3] = lines[3].replace('"decision":"allow"', '"decision":"deny"')
    _rewrite(log10, lines)
    result = verify(str(log10))
    assert not result.ok and result.first_bad_line == 4 and result.records == 3
    assert result.reason is not None and "edited" in result.reason


def test_edited_record_with_recomputed_hash_breaks_the_next_link(log10: Path) -> None:
    lines = _lines(log10)
    record = json.loads(lines[3])
    record["decision"] = "deny"
    record["hash"] = record_hash(record)
    lines[3] = json.dumps(record) + "\n"
    _rewrite(log10, lines)
    result = verify(str(log10))
    assert not result.ok and result.first_bad_line == 5
    assert result.reason is not None and "chain broken" in result.reason


def test_removed_record_is_named(log10: Path) -> None:
    lines = _lines(log10)
    del lines[4]
    _rewrite(log10, lines)
    result = verify(str(log10))
    assert not result.ok and result.first_bad_line == 5
    assert result.reason is not None and "removed" in result.reason


def test_reordered_records_are_named(log10: Path) -> None:
    lines = _lines(log10)
    lines[4], lines[5] = lines[5], lines[4]
    _rewrite(log10, lines)
    result = verify(str(log10))
    assert not result.ok and result.first_bad_line == 5
    assert result.reason is not None and "reordered" in result.reason


def test_inserted_forged_record_is_caught(log10: Path) -> None:
    lines = _lines(log10)
    prev = json.loads(lines[2])["hash"]
    forged = _decision(99, time="2026-01-01T00:00:00Z", prev=prev, decision="allow")
    forged["hash"] = record_hash(forged)
    lines.insert(3, json.dumps(forged) + "\n")
    _rewrite(log10, lines)
    result = verify(str(log10))
    # The forgery is internally consistent; the record after it no longer chains.
    assert not result.ok and result.first_bad_line == 5
    assert result.reason is not None and "inserted" in result.reason


@pytest.mark.parametrize(("junk", "words"), [("\n", "empty line"), ("not json\n", "not a JSON object"), ('{"a":1}\n', "no `hash`")])
def test_inserted_junk_line_is_named(log10: Path, junk: str, words: str) -> None:
    lines = _lines(log10)
    lines.insert(6, junk)
    _rewrite(log10, lines)
    result = verify(str(log10))
    assert not result.ok and result.first_bad_line == 7
    assert result.reason is not None and words in result.reason


def test_removed_first_records_are_caught_unless_anchored(log10: Path) -> None:
    lines = _lines(log10)
    anchor = json.loads(lines[1])["hash"]
    _rewrite(log10, lines[2:])
    result = verify(str(log10))
    assert not result.ok and result.first_bad_line == 1
    assert result.reason is not None and "no earlier record" in result.reason
    assert verify(str(log10), after=anchor).ok


def test_removed_last_records_change_the_head_hash(log10: Path) -> None:
    """Truncating the end leaves a valid chain: only an anchored head hash reveals it."""
    anchored = verify(str(log10)).head_hash
    _rewrite(log10, _lines(log10)[:-2])
    result = verify(str(log10))
    assert result.ok and result.records == 8
    assert result.head_hash != anchored


def test_appending_after_a_tampered_last_line_fails_closed(log10: Path) -> None:
    lines = _lines(log10)
    lines[-1] = lines[-1].replace('"allow"', '"deny"')
    _rewrite(log10, lines)
    with pytest.raises(AuditError, match="audit verify"):
        AuditLog(str(log10))
    _rewrite(log10, [*lines[:-1], "garbage\n"])
    with pytest.raises(AuditError, match="not an intact audit record"):
        AuditLog(str(log10))


# --------------------------------------------------------------------------- rotation


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hashes = _write(path, 40, max_bytes=2000)
    files = sorted(tmp_path.iterdir())
    assert len(files) > 3
    assert all(f.stat().st_size <= 2000 for f in files)
    result = verify(str(path))
    assert result.ok and result.records == 40 and result.head_hash == hashes[-1]
    assert result.files[0].endswith(f".{len(files) - 1}") and result.files[-1] == str(path)
    # the first record of the current file chains to the last of .1
    last_of_1 = json.loads(_lines(Path(f"{path}.1"))[-1])["hash"]
    assert json.loads(_lines(path)[0])["prev"] == last_of_1


def test_rotation_resumes_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 15, max_bytes=2000)
    _write(path, 15, max_bytes=2000)
    assert verify(str(path)).records == 30


def test_tampering_in_a_rotated_file_names_that_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 40, max_bytes=2000)
    older = Path(f"{path}.2")
    lines = _lines(older)
    lines[1] = lines[1].replace('"allow"', '"deny"')
    _rewrite(older, lines)
    result = verify(str(path))
    assert not result.ok and result.file == str(older) and result.first_bad_line == 2


def test_pruned_rotated_files_need_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 40, max_bytes=2000)
    n = max(int(p.name.rsplit(".", 1)[1]) for p in tmp_path.glob("audit.jsonl.*"))
    oldest = Path(f"{path}.{n}")
    anchor = json.loads(_lines(oldest)[-1])["hash"]
    oldest.unlink()
    assert not verify(str(path)).ok
    assert verify(str(path), after=anchor).ok


# --------------------------------------------------------------------------- torn tails


def test_torn_tail_is_reported_not_tampering_and_repaired_on_reopen(log10: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = log10.read_bytes()
    with open(log10, "ab") as f:
        f.write(b'{"decision":"allow","principal":["user:al')  # a write cut short by a crash
    result = verify(str(log10))
    assert result.ok and result.records == 10
    assert len(result.warnings) == 1 and "torn final record" in result.warnings[0] and ":11:" in result.warnings[0]
    with caplog.at_level(logging.WARNING, logger="mcp_guard.audit"), AuditLog(str(log10)) as log:
        log.append(_decision(10))
    assert "torn record" in caplog.text
    assert log10.read_bytes().startswith(data)
    result = verify(str(log10))
    assert result.ok and result.records == 11 and not result.warnings


def test_record_missing_only_its_newline_is_kept(log10: Path) -> None:
    log10.write_bytes(log10.read_bytes()[:-1])
    assert verify(str(log10)).records == 10
    _write(log10, 1)
    result = verify(str(log10))
    assert result.ok and result.records == 11


def test_edited_last_line_without_newline_is_tampering_not_a_torn_tail(log10: Path) -> None:
    lines = _lines(log10)
    lines[-1] = lines[-1][:-1].replace('"allow"', '"deny"')
    _rewrite(log10, lines)
    result = verify(str(log10))
    assert not result.ok and result.first_bad_line == 10


# --------------------------------------------------------------------------- speed


def test_append_is_fast(tmp_path: Path) -> None:
    with AuditLog(str(tmp_path / "audit.jsonl")) as log:
        record = _decision(1)
        start = time.perf_counter()
        for _ in range(2000):
            log.append(record)
        per_call = (time.perf_counter() - start) / 2000
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} µs per append"
    assert os.path.getsize(tmp_path / "audit.jsonl") > 0
