"""The writer of the hash-chained audit log: one line per decision, written before the call goes on.

Several guard processes may share one file: every append takes an exclusive ``flock`` on it and, if
another process wrote (or rotated) since, re-reads the head before chaining to it.  Every failure
raises :class:`AuditError`, and the call it would have recorded is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mcp_guard.audit.encoding import GENESIS, RecordTemplate, canonical, line, now, parse_record, record_hash
from mcp_guard.errors import AuditError

log = logging.getLogger("mcp_guard.audit")

TAIL_CHUNK = 64 * 1024


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
        tries = 0
        while True:
            if self._fd < 0:
                self._open_fd()
            fd = self._fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            except BaseException:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise
            if st is not None and st.st_ino == self._ino and st.st_dev == self._dev:
                break
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._close_fd()  # rotated or removed by someone else: reopen what the path names now
            tries += 1
            if tries == 64:
                raise AuditError(f"the audit log {path} keeps being replaced under us")
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
        last, start, complete = last_line(self._fd, st.st_size)
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
        prev_line, _, _ = last_line(self._fd, start)
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
            body["time"] = now()
        body.setdefault("pid", self._pid)

        def encode(prev: str) -> bytes:
            body["prev"] = prev
            return canonical(body)

        return self._chain(encode)

    def template(self, fixed: Mapping[str, Any], slots: Sequence[str]) -> RecordTemplate:
        """A template for :meth:`append_filled`: ``fixed`` fields (plus this writer's ``pid``), and
        ``slots`` filled per record; ``prev`` and ``time`` are slots the writer fills itself."""
        return RecordTemplate({**fixed, "pid": self._pid}, (*slots, "prev", "time"))

    def append_filled(self, template: RecordTemplate, values: Mapping[str, str]) -> str:
        """:meth:`append` of the template's record with ``values`` in its slots: the same line,
        without encoding the fixed fields again."""
        values = {**values, "time": now()}
        fill = template.fill_in

        def encode(prev: str) -> bytes:
            values["prev"] = prev
            return fill(values)

        return self._chain(encode)

    def _chain(self, encode: Callable[[str], bytes]) -> str:
        """Write the record ``encode(prev)`` gives for the current head; returns its hash."""
        self._lock.acquire()  # (not `with`: its special-method lookups cost more than the pair)
        try:
            if self.path is None:
                self._head = hashlib.sha256(encode(self._head)).hexdigest()
                return self._head
            if self.path == "-":
                digest, text = line(encode(self._head))
                try:
                    sys.stderr.buffer.write(text)
                    sys.stderr.buffer.flush()
                except (OSError, ValueError) as exc:
                    raise AuditError(f"cannot write the audit log to stderr: {exc}") from None
                self._head = digest
                return digest
            try:
                self._acquire()
                try:
                    data = encode(self._head)
                    digest = hashlib.sha256(data).hexdigest()  # line(data), spelled out on the hot path
                    text = b"".join((data[:-1], b',"hash":"', digest.encode(), b'"}\n'))
                    size = len(text)
                    if self.max_bytes is not None and self._size > 0 and self._size + size > self.max_bytes:
                        digest, text = self._rotate_for(encode, size)
                        size = len(text)
                    written = os.write(self._fd, text)  # one write(2) of the whole line, as a rule
                    if written < size or self.fsync:
                        self._write(text, written)
                    self._size += size
                    self._head = digest
                    return digest
                finally:
                    if self._fd >= 0:  # (it is not when a rotation could not open the new file)
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError as exc:
                raise AuditError(f"cannot write the audit log {self.path}: {_describe(exc)}") from None
        finally:
            self._lock.release()

    def _rotate_for(self, encode: Callable[[str], bytes], size: int) -> tuple[str, bytes]:
        """Rotate until a record of ``size`` bytes fits, and encode it again for the head it then
        follows (the new file may have been started, and written, by another process)."""
        assert self.max_bytes is not None
        while self._size > 0 and self._size + size > self.max_bytes:
            self._rotate()
        return line(encode(self._head))

    def _write(self, text: bytes, written: int) -> None:
        """Finish a short write of ``text`` (``written`` bytes are on the file), and fsync if
        configured; on failure no partial record is left behind."""
        size = len(text)
        try:
            if written < size:  # a short write (full disk, signal): finish it or fail below
                view = memoryview(text)
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

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_line(fd: int, end: int) -> tuple[bytes, int, bool]:
    """The last line of the file's first ``end`` bytes (no newline), its offset, and whether it ended in one."""
    complete = end > 0 and os.pread(fd, 1, end - 1) == b"\n"
    pos = end - 1 if complete else end
    chunks: list[bytes] = []
    while pos > 0:
        step = min(TAIL_CHUNK, pos)
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
        last, _, _ = last_line(fd, size)
    finally:
        os.close(fd)
    record = parse_record(last)
    if record is None or not isinstance(record.get("hash"), str):
        raise AuditError(f"the last line of the audit log {prev} is not an audit record; run `mcp-guard audit verify {path}`")
    return str(record["hash"])


