"""Hash-chained JSON Lines audit log: one record per decision, tamper-evident, fail closed.

Each line is one JSON object carrying ``prev`` (the ``hash`` of the record before it) and ``hash``
(SHA-256 over the canonical JSON of the record without ``hash``: sorted keys, compact separators,
UTF-8).  Editing, removing, reordering or inserting a record breaks the chain at a line that
:func:`verify` names; removing records from the *end* is only visible against a head hash that was
anchored elsewhere (``mcp-guard audit verify`` prints it).

Several guard processes may share one file: every append takes an exclusive ``flock`` on it and, if
another process wrote (or rotated) since, re-reads the head before chaining to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mcp_guard.errors import AuditError

log = logging.getLogger("mcp_guard.audit")

GENESIS = "0" * 64
"""``prev`` of the very first record of a log (no record before it)."""

_TAIL_CHUNK = 64 * 1024


# --------------------------------------------------------------------------- canonical JSON


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes, exactly ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False).encode()`` so anyone can recompute a hash with the standard library.

    orjson writes the same bytes ~30x faster except for floats in exponent form below 1e-4
    (``1e-05`` vs ``0.00001``) and integers beyond 64 bits; those rare values take the stdlib path.
    """
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _stdlib_canonical(value)
    return _stdlib_canonical(value) if _small_float(data) else data


def _stdlib_canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _small_float(data: bytes) -> bool:
    """Could ``data`` hold a float that orjson formats differently from the stdlib (|x| < 1e-4)?"""
    if b"0.0000" in data:
        return True
    i = data.find(b"e-")
    while i > 0:
        if 48 <= data[i - 1] <= 57 and i + 2 < len(data) and 48 <= data[i + 2] <= 57:
            return True
        i = data.find(b"e-", i + 2)
    return False


def args_hash(arguments: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a tool call's arguments (``None`` counts as ``{}``)."""
    return hashlib.sha256(canonical({} if arguments is None else arguments)).hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """The ``hash`` a record must carry: SHA-256 of its canonical JSON without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


_stamp: tuple[int, str] = (-1, "")  # (second, its "YYYY-MM-DDTHH:MM:SS." text), replaced as one object


def _now() -> str:
    """UTC time as ``datetime.isoformat(timespec="microseconds")`` with ``Z``: the per-second part is
    formatted once a second, the microseconds arithmetically (a datetime per record was ~5 µs)."""
    global _stamp
    sec, micro = divmod(time.time_ns() // 1000, 1_000_000)
    stamp = _stamp
    if stamp[0] != sec:
        stamp = _stamp = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)))
    return f"{stamp[1]}{micro:06d}Z"


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --------------------------------------------------------------------------- writer


class AuditLog:
    """Appends hash-chained records; every failure raises :class:`AuditError` (the call is refused).

    ``path=None`` disables the log (``append`` still returns a hash); ``"-"`` writes to stderr.
    ``max_bytes`` rotates ``FILE`` to ``FILE.1`` (older ones shift to ``.2``, ``.3``, …) before a write
    would grow it past that size; the new file's first record chains to the old file's last.
    """

    def __init__(self, path: str | None, *, fsync: bool = False, max_bytes: int | None = None) -> None:
        self.path = path
        self.fsync = fsync
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pid = os.getpid()  # which process wrote a record: serve workers and replicas share one log
        self._head = GENESIS
        self._fd = -1
        self._ino = -1
        self._dev = -1
        self._size = 0
        if path is not None and path != "-":
            self._open()

    @property
    def head(self) -> str:
        """Hash of the last record written (or found on open); ``GENESIS`` for an empty log."""
        return self._head

    # -- file handling
    #
    # Every read of the file goes through our own descriptor (pread), never the path: another
    # process may rotate the path away at any moment.  Everything that reads or moves the head
    # happens under flock on the current file, after checking that the path still names it.

    def _open(self) -> None:
        assert self.path is not None
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._open_fd()
            with self._locked():
                pass  # find the head (and repair a torn tail) under the lock
        except OSError as exc:
            self._close_fd()
            raise AuditError(f"cannot open the audit log {self.path}: {_describe(exc)}") from None

    def _open_fd(self) -> None:
        assert self.path is not None
        self._close_fd()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(self._fd)
        self._ino, self._dev = st.st_ino, st.st_dev
        self._size = -1  # unknown: resync under the lock

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _acquire(self) -> None:
        """Lock the file the path names now, with ``_head`` and ``_size`` current.

        One ``stat`` of the path does both checks: it names our file (same device and inode, else
        another process rotated or removed it) and, being our file, its size says whether another
        process appended since our last write.
        """
        path = self.path
        assert path is not None
        for _ in range(64):
            if self._fd < 0:
                self._open_fd()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino == self._ino and st.st_dev == self._dev:
                break
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._close_fd()  # rotated or removed by someone else: reopen what the path names now
        else:
            raise AuditError(f"the audit log {path} keeps being replaced under us")
        assert st is not None
        if st.st_size != self._size:  # first use (-1), or another process appended
            try:
                self._resync()
            except BaseException:
                self._release()
                raise

    def _release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _resync(self) -> None:
        """Re-read the head from the end of the file (under the lock)."""
        st = os.fstat(self._fd)
        self._size = st.st_size
        if not stat.S_ISREG(st.st_mode):
            return  # a device such as /dev/full: nothing to resume
        if st.st_size == 0:
            self._head = _last_hash_of_rotated(self.path)
            return
        last, start, complete = _last_line(self._fd, st.st_size)
        record = parse_record(last)
        if complete or record is not None:
            if record is None or not isinstance(record.get("hash"), str) or record_hash(record) != record["hash"]:
                raise AuditError(
                    f"the last line of the audit log {self.path} is not an intact audit record; "
                    f"run `mcp-guard audit verify {self.path}`"
                )
            self._head = record["hash"]
            if complete:
                return
            os.write(self._fd, b"\n")  # only the newline was lost
            self._size += 1
            return
        # A torn final line: a writer died mid-append, so the call it described was never forwarded.
        log.warning(
            "audit log %s ends with a torn record (%d bytes, incomplete write from a crash); "
            "discarding it and chaining to the last complete record",
            self.path,
            st.st_size - start,
        )
        os.ftruncate(self._fd, start)
        self._size = start
        if start == 0:
            self._head = _last_hash_of_rotated(self.path)
            return
        prev_line, _, _ = _last_line(self._fd, start)
        prev = parse_record(prev_line)
        if prev is None or not isinstance(prev.get("hash"), str):
            raise AuditError(
                f"the audit log {self.path} is damaged before its last line; run `mcp-guard audit verify {self.path}`"
            )
        self._head = prev["hash"]

    def _rotate(self) -> None:
        """Shift ``FILE.N`` up and move ``FILE`` to ``FILE.1`` (holding its lock), then lock the new ``FILE``."""
        assert self.path is not None
        n = 1
        while os.path.exists(f"{self.path}.{n}"):
            n += 1
        for i in range(n - 1, 0, -1):
            os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        os.rename(self.path, f"{self.path}.1")
        if self.fsync:
            _fsync_dir(self.path)
        self._release()
        self._close_fd()
        self._acquire()  # another process may have created (and written to) the new file first

    # -- appending

    def append(self, record: Mapping[str, Any]) -> str:
        """Chain, write and flush one record (fsync if configured); returns its hash."""
        body = dict(record)
        body.pop("hash", None)
        if "time" not in body:
            body["time"] = _now()
        body.setdefault("pid", self._pid)
        with self._lock:
            if self.path is None:
                body["prev"] = self._head
                self._head = hashlib.sha256(canonical(body)).hexdigest()
                return self._head
            if self.path == "-":
                body["prev"] = self._head
                digest, line = _encode(body)
                try:
                    sys.stderr.buffer.write(line)
                    sys.stderr.buffer.flush()
                except (OSError, ValueError) as exc:
                    raise AuditError(f"cannot write the audit log to stderr: {exc}") from None
                self._head = digest
                return digest
            try:
                self._acquire()
                try:
                    body["prev"] = head = self._head
                    digest, line = _encode(body)
                    if self.max_bytes is not None:
                        while self._size > 0 and self._size + len(line) > self.max_bytes:
                            self._rotate()
                        if head != self._head:  # the new file was started (and written) by another process
                            body["prev"] = self._head
                            digest, line = _encode(body)
                    self._write(line)
                    self._head = digest
                    return digest
                finally:
                    self._release()
            except OSError as exc:
                raise AuditError(f"cannot write the audit log {self.path}: {_describe(exc)}") from None

    def _write(self, line: bytes) -> None:
        size = len(line)
        written = 0
        try:
            written = os.write(self._fd, line)
            if written < size:  # a short write (full disk, signal): finish it or fail below
                view = memoryview(line)
                while written < size:
                    written += os.write(self._fd, view[written:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            if written:
                # Never leave a partial record behind for the next append to chain after.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            raise
        self._size += written

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode(body: dict[str, Any]) -> tuple[str, bytes]:
    """One serialisation: hash the canonical bytes, then splice ``hash`` in as the last key."""
    data = canonical(body)
    digest = hashlib.sha256(data).hexdigest()
    return digest, data[:-1] + b',"hash":"' + digest.encode() + b'"}\n'


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_record(line: bytes) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None if it is not one (torn, foreign or empty)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(line)  # integers beyond 64 bits
        except (ValueError, UnicodeDecodeError):
            return None
    return value if isinstance(value, dict) else None


def _last_line(fd: int, end: int) -> tuple[bytes, int, bool]:
    """The last line of the file's first ``end`` bytes (no newline), its offset, and whether it ended in one."""
    complete = end > 0 and os.pread(fd, 1, end - 1) == b"\n"
    pos = end - 1 if complete else end
    chunks: list[bytes] = []
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        chunk = os.pread(fd, step, pos - step)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            chunks.append(chunk[nl + 1 :])
            pos = pos - step + nl + 1
            break
        chunks.append(chunk)
        pos -= step
    chunks.reverse()
    return b"".join(chunks), pos, complete


def _last_hash_of_rotated(path: str | None) -> str:
    """An empty current file continues the chain of ``FILE.1`` if there is one."""
    if path is None:
        return GENESIS
    prev = f"{path}.1"
    try:
        size = os.path.getsize(prev)
    except OSError:
        return GENESIS
    if size == 0:
        return GENESIS
    fd = os.open(prev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        line, _, _ = _last_line(fd, size)
    finally:
        os.close(fd)
    record = parse_record(line)
    if record is None or not isinstance(record.get("hash"), str):
        raise AuditError(f"the last line of the audit log {prev} is not an audit record; run `mcp-guard audit verify {path}`")
    return str(record["hash"])


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
                step = min(_TAIL_CHUNK, end)
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
