"""One POST to an OTLP/HTTP collector over one kept-alive socket, the same bytes as the SDK's.

The SDK's default transport is ``requests``, which on every POST merges the environment's proxy,
``.netrc`` and CA-bundle settings (3.3 million instructions per POST of a 50 kB batch); its
``urllib3`` transport spends about 0.9 million on a 5 kB one (the pool manager, the retry and
timeout objects, ``http.client``'s header parsing through ``email``).  ``LeanTransport`` writes the
same bytes to one kept-alive socket and frames the answer with llhttp (``httptools``), at a tenth
of that (``bench/otlp_post.py``).  ``transport.lean_transport`` says where it is used.  The SDK's
OTLP client still does everything above the transport: the headers
(``OTEL_EXPORTER_OTLP_*_HEADERS``), compression, the time-out and the retries (429, 502, 503, 504
with ``Retry-After``; connection errors).

What ``LeanTransport`` sends is the SDK ``urllib3`` transport's request byte for byte: the request
line, ``Host``, ``Accept-Encoding: identity``, ``Content-Length``, then the client's headers in
their order, then the body (``tests/telemetry/test_transport.py`` compares them on a raw socket).
A request it could not write the same way (a header ``http.client`` would refuse or write
differently, no ``User-Agent``, a framing header set by the operator, another URL) goes through
the ``urllib3`` transport itself.  Errors are classed as ``urllib3``'s are for the client's
retries: no answer to read (refused, reset, closed, an answer that is not HTTP/1.x) is a
connection error, retried; a collector that does not answer within the time-out is not.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools
from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
from urllib3 import HTTPHeaderDict
from urllib3.util import parse_url

if TYPE_CHECKING:
    from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport

HEAD_LIMIT = 64 * 1024  # an answer's status line and headers
BODY_LIMIT = 1024 * 1024  # an answer's body kept (OTLP answers are a few bytes; the rest is read and dropped)
_FRAMING = frozenset(("host", "accept-encoding", "content-length", "transfer-encoding"))
# ``http.client``'s own checks (``putheader``): what it refuses, the lean path hands to urllib3 to refuse
_LEGAL_NAME = re.compile(rb"[^:\s][^:\r\n]*").fullmatch
_ILLEGAL_VALUE = re.compile(rb"\n(?![ \t])|\r(?![ \t\n])").search


class CollectorConnectionError(ConnectionError):
    """The collector could not be reached or gave no readable answer: the OTLP client retries it."""


@dataclass(frozen=True, slots=True)
class LeanResult(BaseHTTPResult):
    body: bytes = b""
    fields: tuple[tuple[str, str], ...] = ()

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return HTTPHeaderDict(self.fields)  # case-insensitive, repeated fields joined with ", "


class _Answer:
    """One HTTP/1.x answer as llhttp frames it (``httptools`` callbacks); interim ``1xx`` skipped."""

    __slots__ = ("body", "complete", "fields", "fields_size", "head", "interim", "keep", "kept", "parser", "reason", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = ""
        self.fields: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.kept = 0
        self.head = 0  # bytes fed before the headers ended (a head that never ends)
        self.fields_size = 0
        self.complete = self.interim = self.keep = False

    def feed(self, data: bytes) -> None:
        if not self.status:
            self.head += len(data)
        self.parser.feed_data(data)
        if not self.status and self.head > HEAD_LIMIT:
            raise CollectorConnectionError(f"the collector answered with headers over {HEAD_LIMIT} bytes")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")  # llhttp may hand it over in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.status:  # not a chunked body's trailer
            self.fields_size += len(name) + len(value) + 4  # one feed may hold the whole head and more
            if self.fields_size > HEAD_LIMIT:
                raise CollectorConnectionError(f"the collector answered with headers over {HEAD_LIMIT} bytes")
            self.fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:
            raise CollectorConnectionError("the collector switched protocols")
        self.interim = status < 200
        if self.interim:
            self.fields, self.reason = [], ""
        else:
            self.status = status

    def on_body(self, data: bytes) -> None:
        if self.kept < BODY_LIMIT:
            self.body.append(data)
            self.kept += len(data)

    def on_message_complete(self) -> None:
        if self.interim:  # 100 Continue, 103 Early Hints: the answer follows
            self.interim = False
            return
        self.complete = True
        self.keep = self.parser.should_keep_alive()  # read here: llhttp resets it for the next message

    def framed_by_close(self) -> bool:
        """Whether the answer's body runs to the end of the connection (no length, not chunked)."""
        fields = {name.lower(): value for name, value in self.fields}
        codings = fields.get("transfer-encoding")
        return bool(self.status) and "content-length" not in fields and (
            codings is None or codings.rsplit(",", 1)[-1].strip().lower() != "chunked")


class LeanTransport(BaseHTTPTransport):
    """POSTs to one ``http://`` collector over one kept-alive socket (see the module's docstring)."""

    def __init__(self, endpoint: str) -> None:
        url = parse_url(endpoint)  # urllib3's own parse: the same host, port and target as its transport
        host = url.host or ""
        self._endpoint = endpoint
        self._address = (host[1:-1] if host.startswith("[") else host, url.port or 80)
        named = self._address[0].rstrip(".")  # what ``http.client`` writes for urllib3's connection
        try:
            host_bytes = named.encode("ascii")
        except UnicodeEncodeError:
            host_bytes = named.encode("idna")
        if ":" in named:
            host_bytes = b"[" + host_bytes + b"]"
        self._host = host_bytes + (b"" if self._address[1] == 80 else b":%d" % self._address[1])
        self._target = url.request_uri.encode("ascii")
        self._sock: socket.socket | None = None
        self._poll: Any = None
        self._lock = threading.Lock()
        self._heads: tuple[Any, bytes | None, bytes] | None = None  # (headers, head up to Content-Length, rest)
        self._fallback: Urllib3HTTPTransport | None = None

    @staticmethod
    def suits(endpoint: str) -> bool:
        """Whether ``endpoint`` is one the lean transport serves: plain HTTP, no credentials in it."""
        try:
            url = parse_url(endpoint)
            url.request_uri.encode("ascii")
        except (ValueError, UnicodeError):
            return False
        return url.scheme == "http" and url.auth is None and bool(url.host)

    def _head(self, method: str, headers: Mapping[str, str]) -> tuple[bytes, bytes] | None:
        """The request's head around its ``Content-Length`` line, or None when only urllib3 writes it
        the same way; made once per header set (the OTLP client sends the same every time)."""
        items = (method, tuple(headers.items()))
        cached = self._heads
        if cached is not None and cached[0] == items:
            return (cached[1], cached[2]) if cached[1] is not None else None
        head: tuple[bytes, bytes] | None = None
        lines = []
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str) or name.lower() in _FRAMING:
                break
            try:
                raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
            except UnicodeEncodeError:
                break
            if not _LEGAL_NAME(raw_name) or _ILLEGAL_VALUE(raw_value):
                break
            lines.append(raw_name + b": " + raw_value + b"\r\n")
        else:
            if method == "POST" and any(name.lower() == "user-agent" for name in headers):
                head = (b"POST " + self._target + b" HTTP/1.1\r\nHost: " + self._host
                        + b"\r\nAccept-Encoding: identity\r\nContent-Length: ", b"\r\n" + b"".join(lines) + b"\r\n")
        self._heads = (items, *head) if head is not None else (items, None, b"")
        return head

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, timeout: float | None = None,
                data: bytes | None = None) -> BaseHTTPResult:
        head = self._head(method, headers or {}) if url == self._endpoint else None
        if head is None:
            return self._urllib3().request(method, url, headers=headers, timeout=timeout, data=data)
        body = data or b""
        message = head[0] + b"%d" % len(body) + head[1] + body
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            try:
                answer = self._exchange(message, deadline)
            except (OSError, httptools.HttpParserError) as error:  # the socket's and llhttp's: the result says which
                self._drop()
                return LeanResult(error=error if isinstance(error, (CollectorConnectionError, TimeoutError))
                                  else CollectorConnectionError(f"the collector's answer could not be read: {error}"))
        return LeanResult(status_code=answer.status, reason=answer.reason,
                          body=b"".join(answer.body), fields=tuple(answer.fields))

    def _exchange(self, message: bytes, deadline: float | None) -> _Answer:
        sock = self._sock
        if sock is not None and self._poll.poll(0):  # readable while idle: closed by the collector (urllib3's check)
            self._drop()
            sock = None
        if sock is None:
            try:
                sock = socket.create_connection(self._address, self._left(deadline))
            except OSError as error:
                raise CollectorConnectionError(f"cannot connect to the collector: {error}") from error
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 does
            self._sock, self._poll = sock, select.poll()
            self._poll.register(sock, select.POLLIN)
        try:
            sock.settimeout(self._left(deadline))
            sock.sendall(message)
        except TimeoutError:
            raise
        except OSError as error:
            raise CollectorConnectionError(f"the collector's connection broke: {error}") from error
        answer = _Answer()
        while not answer.complete:
            sock.settimeout(self._left(deadline))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise
            except OSError as error:
                raise CollectorConnectionError(f"the collector's connection broke: {error}") from error
            if not data:
                if answer.framed_by_close():
                    answer.complete = True
                    self._drop()
                    return answer
                raise CollectorConnectionError("the collector closed the connection before it answered")
            answer.feed(data)
        if not answer.keep:
            self._drop()
        return answer

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the collector did not answer in time")
        return left

    def _drop(self) -> None:
        sock, self._sock, self._poll = self._sock, None, None
        if sock is not None:
            sock.close()

    def _urllib3(self) -> Urllib3HTTPTransport:
        if self._fallback is None:
            from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport

            self._fallback = Urllib3HTTPTransport()
        return self._fallback

    def is_connection_error(self, exception: Exception | None) -> bool:
        if isinstance(exception, CollectorConnectionError):
            return True
        return self._fallback is not None and self._fallback.is_connection_error(exception)

    def close(self) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._lock.release()
        else:  # a request is in flight on another thread: end its wait now (it then drops the socket)
            sock = self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._fallback is not None:
            self._fallback.close()


__all__ = ["CollectorConnectionError", "LeanResult", "LeanTransport"]
