"""The HTTP exchanges of a Streamable HTTP upstream: a lean HTTP/1.1 client, and httpx2 where it is needed.

``Http1Link`` is a small keep-alive connection pool over asyncio streams that sends each request
as one write (head and body together) and reads answers by ``Content-Length``, chunked encoding
or close.  Per request it costs a fraction of a general client: no request/response objects, no
cookie jar, no URL merging; the upstream also wakes up once per request instead of twice.

``HttpxLink`` is the same interface over an ``httpx2.AsyncClient``; it is used when the upstream
has ``auth:`` (the OAuth providers are ``httpx2.Auth`` flows) or when a proxy from the
environment applies to its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import httpx2

from mcp_guard import __version__
from mcp_guard.errors import UpstreamError

CONNECT_TIMEOUT = 30.0  # the SDK transport's connect/write timeout
IDLE_KEEP = 4.0  # seconds an idle connection is reused (servers commonly close after 5)
MAX_CONNECTIONS = 256  # open connections to one upstream; more requests wait for one
HEAD_LIMIT = 64 * 1024  # response status line + headers


class LinkError(UpstreamError):
    """The upstream could not be reached or broke HTTP; ``connect`` says whether no connection was made."""

    def __init__(self, message: str, *, connect: bool = False) -> None:
        super().__init__(message)
        self.connect = connect


class Exchange(Protocol):
    """One HTTP response being read."""

    status: int
    headers: dict[str, str]  # lower-case names

    async def read(self, limit: int) -> bytes:
        """The whole body; ``LinkError`` past ``limit`` bytes."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (for ``text/event-stream``)."""

    async def aclose(self) -> None:
        """Release the connection (kept alive only when the body was read to its end)."""


class Link(Protocol):
    async def request(self, method: str, headers: Mapping[str, str], body: bytes | None) -> Exchange: ...
    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- the lean client


class _Conn:
    __slots__ = ("idle_since", "reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.reused = False

    def usable(self) -> bool:
        return (
            not self.writer.transport.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < IDLE_KEEP
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class _Response:
    """A response on one pooled connection; the connection goes back to the pool when the body was read."""

    def __init__(self, link: Http1Link, conn: _Conn, status: int, headers: dict[str, str], method: str) -> None:
        self.status = status
        self.headers = headers
        self._link = link
        self._conn: _Conn | None = conn
        self._keep = headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304):
            self._length: int | None = 0
            self._chunked = False
        else:
            self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = headers.get("content-length")
            try:
                self._length = None if self._chunked or length is None else int(length)
            except ValueError:
                raise LinkError(f"answered with an invalid Content-Length {length!r}") from None
            if self._length is not None and self._length < 0:
                raise LinkError(f"answered with an invalid Content-Length {length!r}")
            if not self._chunked and self._length is None:
                self._keep = False  # the body runs to the end of the connection
        self._done = self._length == 0

    async def read(self, limit: int) -> bytes:
        if self._length is not None:
            if self._length > limit:
                await self.aclose()
                raise LinkError(f"sent a response of {self._length} bytes, over the limit of {limit} bytes")
            assert self._conn is not None
            try:
                data = await self._conn.reader.readexactly(self._length) if self._length else b""
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await self.aclose()
                raise LinkError(f"closed the connection in the middle of a response ({type(exc).__name__})") from None
            self._done = True
            await self.aclose()
            return data
        try:
            return await _collect(self.chunks(), limit)
        except LinkError:
            await self.aclose()
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None or self._done:
            return
        reader = conn.reader
        try:
            if self._chunked:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise LinkError("sent a malformed chunked body") from None
                    if size < 0:
                        raise LinkError("sent a malformed chunked body")
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                            pass
                        break
                    while size:  # in pieces: a chunk's announced size is no reason to buffer it whole
                        data = await reader.read(min(size, 65536))
                        if not data:
                            raise asyncio.IncompleteReadError(b"", size)
                        size -= len(data)
                        yield data
                    if await reader.readexactly(2) != b"\r\n":
                        raise LinkError("sent a malformed chunked body")
            elif self._length is not None:
                left = self._length
                while left:
                    data = await reader.read(min(left, 65536))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    yield data
            else:
                while data := await reader.read(65536):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as exc:
            await self.aclose()
            raise LinkError(f"closed the connection in the middle of a response ({type(exc).__name__})") from None
        self._done = True
        await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep:
            self._link.release(conn)
        else:
            self._link.discard(conn)


class Http1Link:
    """Keep-alive HTTP/1.1 connections to one origin; requests beyond ``MAX_CONNECTIONS`` wait."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UpstreamError(f"cannot use upstream URL {url}: only http:// and https:// are supported")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = _tls_context() if u.scheme == "https" else None
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if u.port is not None:
            host += f":{u.port}"
        fixed = {"Host": host, "User-Agent": f"mcp-guard/{__version__}", **headers}
        self._prefix = {m: f"{m} {target} HTTP/1.1\r\n{_lines(fixed)}".encode("latin-1") for m in ("POST", "GET", "DELETE")}
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._closed = False

    async def request(self, method: str, headers: Mapping[str, str], body: bytes | None) -> Exchange:
        head = self._prefix[method] + _lines(headers).encode("latin-1")
        if body is not None:
            data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        else:
            data = head + b"\r\n"
        await self._slots.acquire()
        try:
            fresh = False
            while True:
                conn = await self._connection(fresh=fresh)
                try:
                    conn.writer.write(data)
                    status, fields = await _read_head(conn.reader)
                    return _Released(_Response(self, conn, status, fields, method), self._slots)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    conn.close()
                    if conn.reused and not fresh:  # the server closed an idle connection as we sent: once more, new
                        fresh = True
                        continue
                    raise LinkError(f"closed the connection before answering ({type(exc).__name__})") from None
                except BaseException:
                    conn.close()
                    raise
        except BaseException:
            self._slots.release()
            raise

    async def _connection(self, *, fresh: bool = False) -> _Conn:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.usable():
                conn.reused = True
                return conn
            conn.close()
        if self._closed:
            raise LinkError("is closed")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=HEAD_LIMIT), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise LinkError(f"did not accept a connection within {CONNECT_TIMEOUT:g}s", connect=True) from None
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"refused the connection ({exc.strerror or exc})" if isinstance(exc, OSError) and exc.strerror
                            else f"could not be connected to ({exc})", connect=True) from None
        return _Conn(reader, writer)

    def release(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def discard(self, conn: _Conn) -> None:
        conn.close()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Released:
    """An exchange that gives its connection slot back exactly once, however it ends."""

    def __init__(self, inner: _Response, slots: asyncio.Semaphore) -> None:
        self._inner = inner
        self._slots: asyncio.Semaphore | None = slots
        self.status = inner.status
        self.headers = inner.headers

    def _free(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()

    async def read(self, limit: int) -> bytes:
        try:
            return await self._inner.read(limit)
        finally:
            await self.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner.chunks():
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()
        self._free()


async def _collect(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """A body read whole, refused as soon as it passes ``limit`` (never buffered past it)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise LinkError(f"sent a response over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise LinkError(f"answered with response headers over {HEAD_LIMIT} bytes") from None
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise LinkError(f"did not answer in HTTP/1.1 ({lines[0][:80]!r})")
        status = int(parts[1])
        if 100 <= status < 200:
            continue  # an interim answer (100 Continue, 103 Early Hints)
        fields: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        return status, fields


def _lines(headers: Mapping[str, str]) -> str:
    out = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise UpstreamError(f"refused to send header {name!r}: it contains a line break or a colon in its name")
        out.append(f"{name}: {value}\r\n")
    return "".join(out)


def _tls_context() -> ssl.SSLContext:
    """The CA bundle httpx2 uses (certifi), so both links trust the same servers."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx2
        return ssl.create_default_context()


# --------------------------------------------------------------------------- httpx2 (auth, proxies)


class _HttpxExchange:
    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def read(self, limit: int) -> bytes:
        try:
            return await _collect(self.chunks(), limit)
        finally:
            await self.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx2.HTTPError as exc:
            raise LinkError(f"closed the connection in the middle of a response ({exc})") from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxLink:
    """The same exchanges through an ``httpx2.AsyncClient`` (its auth flow, its proxy support)."""

    def __init__(self, client: httpx2.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url

    async def request(self, method: str, headers: Mapping[str, str], body: bytes | None) -> Exchange:
        request = self._client.build_request(method, self._url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx2.ConnectError as exc:
            raise LinkError(f"could not be connected to ({exc})", connect=True) from None
        except httpx2.HTTPError as exc:
            raise LinkError(f"failed ({type(exc).__name__}: {exc})") from None
        return _HttpxExchange(response)

    async def aclose(self) -> None:
        await self._client.aclose()
