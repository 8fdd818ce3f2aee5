"""Fail closed: every write failure is an AuditError; a crashed writer leaves a verifiable log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcp_guard.audit import AuditLog, verify
from mcp_guard.errors import AuditError

HERE = Path(__file__).parent


def test_full_disk_is_an_audit_error() -> None:
    """/dev/full answers every write with ENOSPC, like a full disk."""
    log = AuditLog("/dev/full")
    with pytest.raises(AuditError, match="No space left on device") as info:
        log.append({"decision": "allow"})
    assert str(info.value).startswith("cannot write the audit log /dev/full")
    log.close()


def test_unusable_directory_is_an_audit_error_at_startup(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(AuditError, match="cannot open the audit log"):
        AuditLog(str(blocker / "audit.jsonl"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_an_audit_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(AuditError, match="Permission denied"):
            AuditLog(str(ro / "audit.jsonl"))
    finally:
        ro.chmod(0o700)


def test_file_removed_and_directory_gone_mid_run_is_an_audit_error(tmp_path: Path) -> None:
    """Someone deletes the log directory under a running guard: the next append refuses."""
    d = tmp_path / "logs"
    log = AuditLog(str(d / "audit.jsonl"))
    log.append({"decision": "allow"})
    (d / "audit.jsonl").unlink()
    d.rmdir()
    d.write_text("now a file")  # the directory cannot be recreated either
    with pytest.raises(AuditError, match="cannot write the audit log"):
        log.append({"decision": "allow"})
    log.close()


def test_disk_filling_up_mid_record_leaves_no_partial_line(tmp_path: Path) -> None:
    """A real file-size limit (RLIMIT_FSIZE) cuts a write short: AuditError, and the file still verifies."""
    path = tmp_path / "audit.jsonl"
    code = f"""
import resource, signal, sys
from mcp_guard.audit import AuditLog
from mcp_guard.errors import AuditError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
log = AuditLog({str(path)!r})
n = 0
try:
    while True:
        log.append({{"decision": "allow", "pad": "x" * 150, "n": n}})
        n += 1
except AuditError as exc:
    print(n, exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    written, message = proc.stdout.split(" ", 1)
    assert "cannot write the audit log" in message and "File too large" in message
    result = verify(str(path))
    assert result.ok and result.records == int(written) and not result.warnings
    assert path.read_bytes().endswith(b"\n")


def test_stderr_closed_is_an_audit_error() -> None:
    code = (
        "import os, sys\n"
        "from mcp_guard.audit import AuditLog\n"
        "from mcp_guard.errors import AuditError\n"
        "log = AuditLog('-')\n"
        "os.close(2)\n"
        "try:\n"
        "    log.append({'decision': 'allow'})\n"
        "except AuditError as exc:\n"
        "    print('refused:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("refused: cannot write the audit log to stderr"), proc


@pytest.mark.parametrize("fsync", [False, True])
def test_writer_killed_mid_traffic_leaves_a_verifiable_log(tmp_path: Path, fsync: bool) -> None:
    """kill -9 a writer appending (and rotating) as fast as it can, several times over: after every
    kill the log verifies up to its last complete record, and a restarted writer continues the chain."""
    path = tmp_path / "audit.jsonl"
    args = [sys.executable, str(HERE / "auditproc.py"), str(path), "0", "20000", "fsync" if fsync else "nofsync"]
    records = 0
    for delay in (0.05, 0.5, 0.13, 0.31, 0.22):
        proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        result = verify(str(path))
        assert result.ok, result
        assert result.records > records
        assert all("torn final record" in w for w in result.warnings)
        records = result.records

    with AuditLog(str(path), max_bytes=20000) as log:
        log.append({"decision": "allow", "after": "restart"})
    again = verify(str(path))
    assert again.ok and again.records == records + 1 and not again.warnings


def test_simulated_torn_write_after_kill(tmp_path: Path) -> None:
    """A crash inside write() (power loss) leaves half a line: a warning, never tampering."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(str(path)) as log:
        for i in range(5):
            log.append({"decision": "allow", "n": i})
    whole = path.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    for cut in (1, len(last) // 2, len(last) - 1):
        path.write_bytes(whole[: len(whole) - len(last) - 1] + last[:cut])
        result = verify(str(path))
        assert result.ok and result.records == 4 and len(result.warnings) == 1, (cut, result)
