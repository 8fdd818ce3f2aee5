"""HTTP/1.1 response framing for the lean upstream client, by llhttp (``httptools``).

An upstream connection is shared by every caller of the guard, one request at a time, so where
one response ends and the next begins decides whose answer is whose.  That is left to llhttp, the
parser Node.js uses, rather than to hand-written code: it refuses conflicting ``Content-Length``
headers, ``Content-Length`` beside ``Transfer-Encoding``, folded header lines and malformed chunks,
reads chunked bodies only when ``chunked`` is the final coding, and honours ``Connection: close``.

On top of llhttp, ``Framer`` holds these rules of the guard's own:

* a connection carries exactly one response per request: bytes that arrive when no request is
  waiting, or a second response after the first, are refused (the connection is then closed and
  never reused);
* only an HTTP/1.1 response keeps its connection (an HTTP/1.0 one closes it, even with
  ``Connection: keep-alive``, as h11 does);
* repeated header fields are joined with ``", "`` (RFC 9110, section 5.3), so no copy is lost;
* interim answers (``1xx``) are skipped, ``101 Switching Protocols`` is refused;
* a response whose body runs to the end of the connection is complete only at a clean end.
"""

from __future__ import annotations

from collections import deque

import httptools

HEAD_LIMIT = 64 * 1024  # response status line + headers


class FrameError(Exception):
    """The upstream's bytes cannot be framed as exactly one response to the request sent."""


class Framer:
    """One connection's responses, fed as they arrive; ``expect`` before each request."""

    __slots__ = (
        "_head_bytes",
        "_interim",
        "_parser",
        "_started",
        "body",
        "buffered",
        "complete",
        "expecting",
        "failure",
        "head_done",
        "headers",
        "keep",
        "status",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names
        self.body: deque[bytes] = deque()
        self.buffered = 0  # bytes in ``body``
        self.head_done = False
        self.complete = False
        self.keep = False
        self.expecting = False
        self.failure: str | None = None
        self._head_bytes = 0
        self._interim = False
        self._started = False

    def expect(self) -> None:
        """A request went out: the next bytes are its response."""
        self.status, self.headers, self.body, self.buffered = 0, {}, deque(), 0
        self.head_done = self.complete = self.keep = self._interim = self._started = False
        self._head_bytes = 0
        self.expecting = True

    def feed(self, data: bytes) -> None:
        """Parse what arrived; ``FrameError`` (also kept in ``failure``) when it cannot be framed."""
        try:
            if self.failure is not None:
                raise FrameError(self.failure)
            if not self.expecting:
                raise FrameError("sent bytes no request asked for")
            if not self.head_done:
                self._head_bytes += len(data)
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                raise FrameError(str(cause) if isinstance(cause, FrameError) else f"broke HTTP/1.1 ({exc})") from None
            except httptools.HttpParserUpgrade:
                raise FrameError("switched protocols") from None
            except httptools.HttpParserError as exc:
                what = "sent a malformed chunked body" if "chunk" in str(exc).lower() else "broke HTTP/1.1"
                raise FrameError(f"{what} ({exc})") from None
            if not self.head_done and self._head_bytes > HEAD_LIMIT:
                raise FrameError(f"answered with response headers over {HEAD_LIMIT} bytes")
        except FrameError as exc:
            self.failure = self.failure or str(exc)
            self.keep = False
            raise

    def end(self) -> None:
        """The connection ended: a body that runs to the end of the connection is complete now."""
        self.keep = False
        if self.head_done and not self.complete and self.failure is None and self._framed_by_close():
            self.complete = True
            self.expecting = False

    def _framed_by_close(self) -> bool:
        if "content-length" in self.headers:
            return False
        codings = self.headers.get("transfer-encoding")
        return codings is None or codings.rsplit(",", 1)[-1].strip().lower() != "chunked"

    # ------------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        if self._started:
            raise FrameError("sent more than one response to one request")
        self._started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a chunked body's trailer fields: not used
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101:
            raise FrameError("switched protocols")
        if 100 <= status < 200:
            self._interim = True
            self.headers = {}
            return
        self.status = status
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)
        self.buffered += len(data)

    def on_message_complete(self) -> None:
        if self._interim:  # 100 Continue, 103 Early Hints: the response follows on the same request
            self._interim = self._started = False
            self._head_bytes = 0
            return
        self.complete = True
        self.keep = self._parser.should_keep_alive() and self._parser.get_http_version() == "1.1"
        self.expecting = False
