"""The HTTP exchanges of a Streamable HTTP upstream: a lean HTTP/1.1 client (httpx2 where it is needed: ``httpx_link.py``).

``Http1Link`` is a small keep-alive connection pool over asyncio protocols that sends each request
as one write (head and body together) and leaves the framing of answers to llhttp (``framing.py``):
a connection goes back to the pool only after exactly one complete response that allows
keep-alive, and anything it cannot frame closes the connection and fails that request.  Per request it costs a fraction of a general client: no request/response objects, no
cookie jar, no URL merging; the upstream also wakes up once per request instead of twice.

A request can also go out without a task of its own (``post_now``): on an idle connection, its
response is watched as it arrives and a whole small JSON answer is handed on from the connection's
own callback; anything else (an event stream, an error status, a failure) goes the general way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol, cast
from urllib.parse import urlsplit

from mcp_guard import __version__
from mcp_guard.errors import UpstreamError
from mcp_guard.upstreams.framing import FrameError, Framer

CONNECT_TIMEOUT = 30.0  # the SDK transport's connect/write timeout
IDLE_KEEP = 4.0  # seconds an idle connection is reused (servers commonly close after 5)
MAX_CONNECTIONS = 256  # open connections to one upstream; more requests wait for one
BLOCKS_KEPT = 256  # request header blocks kept encoded (a handshake-era session sends the same ones on every request)


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

PAUSE_AT = 256 * 1024  # body bytes buffered before the connection stops reading
RESUME_AT = 64 * 1024


class _Conn(asyncio.Protocol):
    """One connection: what arrives is framed as it arrives (``Framer``), so stray bytes are seen even while idle."""

    def __init__(self) -> None:
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reused = False
        self.lost = False
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self.watch: Callable[[], None] | None = None  # a request sent without a task (``Quick``) is told of each arrival

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.framer.feed(data)
        except FrameError:
            self.close()  # never reused; a response already complete is still delivered
        if self.framer.buffered > PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._notify()
        if self.watch is not None:
            self.watch()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.framer.end()
        self._notify()
        if self.watch is not None:
            self.watch()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self) -> None:
        """Until something arrives or the connection ends."""
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    def take(self) -> bytes | None:
        """The next piece of the body, if one arrived."""
        framer = self.framer
        if not framer.body:
            return None
        data = framer.body.popleft()
        framer.buffered -= len(data)
        if self._paused and framer.buffered < RESUME_AT and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def take_all(self) -> bytes:
        """The whole body buffered so far."""
        framer = self.framer
        data = b"".join(framer.body)
        framer.body.clear()
        framer.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.framer.expect()
        self.transport.write(data)

    def sound(self) -> bool:
        """Open, and nothing on it that could not be framed."""
        return not self.lost and self.transport is not None and not self.transport.is_closing() and self.framer.failure is None

    def usable(self) -> bool:
        return self.sound() and time.monotonic() - self.idle_since < IDLE_KEEP

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()


class _Response:
    """A response on one pooled connection; the connection goes back to the pool only when the body was
    read to its end, the response allows keep-alive and nothing else arrived on it."""

    def __init__(self, link: Http1Link, conn: _Conn) -> None:
        self.status = conn.framer.status
        self.headers = conn.framer.headers
        self._link = link
        self._conn: _Conn | None = conn

    async def read(self, limit: int) -> bytes:
        conn = self._conn
        if conn is not None and conn.framer.complete and conn.framer.buffered <= limit:  # all here already: no loop
            data = conn.take_all()
            await self.aclose()
            return data
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await self.aclose()
            raise LinkError(f"sent a response of {int(length)} bytes, over the limit of {limit} bytes")
        try:
            return await collect_body(self.chunks(), limit)
        except LinkError:
            await self.aclose()
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        framer = conn.framer
        while True:
            data = conn.take()
            if data is not None:
                yield data
                continue
            if framer.complete:
                break
            if framer.failure is not None or conn.lost:
                await self.aclose()
                raise LinkError(framer.failure or "closed the connection in the middle of a response")
            await conn.wait()
        await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.framer.complete and conn.framer.keep and conn.sound():
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
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}  # headers -> their lines, checked and encoded

    def _block(self, headers: Mapping[str, str]) -> bytes:
        key = tuple(headers.items())
        block = self._blocks.get(key)
        if block is None:
            block = _lines(headers).encode("latin-1")  # refuses a line break before anything is kept
            if len(self._blocks) >= BLOCKS_KEPT:
                self._blocks.clear()
            self._blocks[key] = block
        return block

    def _message(self, method: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
        head = self._prefix[method] + self._block(headers)
        if body is not None:
            return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        return head + b"\r\n"

    def post_now(self, headers: Mapping[str, str], body: bytes, limit: int, whole: Callable[[bytes], None],
                 other: Callable[[Quick], None]) -> Quick | None:
        """Send a POST at once, without a task, when an idle connection and a slot are free (None: then
        ``request``).  Its response is watched as it arrives: a whole ``200`` JSON answer of at most
        ``limit`` bytes goes to ``whole(body)``, anything else to ``other(quick)`` as soon as that is
        clear (the general path then reads it: ``Quick.exchange``)."""
        if self._closed or not self._idle or self._slots.locked():
            return None
        data = self._message("POST", headers, body)  # refuses a header line break before anything is taken
        conn = self._idle.pop()
        if not conn.usable():
            conn.close()
            return None
        _take_now(self._slots)
        conn.reused = True
        quick = Quick(self, conn, limit, whole, other)
        conn.send(data)
        return quick

    async def request(self, method: str, headers: Mapping[str, str], body: bytes | None) -> Exchange:
        data = self._message(method, headers, body)
        await self._slots.acquire()
        try:
            fresh = False
            while True:
                conn = await self._connection(fresh=fresh)
                try:
                    conn.send(data)
                    while not conn.framer.head_done:
                        if conn.framer.failure is not None:
                            raise LinkError(conn.framer.failure)
                        if conn.lost:
                            raise ConnectionResetError
                        await conn.wait()
                    return _Released(_Response(self, conn), self._slots)
                except ConnectionError as exc:
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
            _, conn = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(_Conn, self.host, self.port, ssl=self._ssl), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise LinkError(f"did not accept a connection within {CONNECT_TIMEOUT:g}s", connect=True) from None
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(f"refused the connection ({exc.strerror or exc})" if isinstance(exc, OSError) and exc.strerror
                            else f"could not be connected to ({exc})", connect=True) from None
        return conn

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


class Quick:
    """A POST sent by ``Http1Link.post_now``: it holds its connection and a slot until its response is
    taken whole, handed on, or the request is cancelled."""

    __slots__ = ("_conn", "_limit", "_link", "_other", "_whole")

    def __init__(self, link: Http1Link, conn: _Conn, limit: int, whole: Callable[[bytes], None],
                 other: Callable[[Quick], None]) -> None:
        self._link = link
        self._conn: _Conn | None = conn
        self._limit = limit
        self._whole = whole
        self._other = other
        conn.watch = self._arrived

    def _arrived(self) -> None:
        conn = self._conn
        if conn is None:
            return
        framer = conn.framer
        if framer.failure is None and not conn.lost:
            if not framer.head_done:
                return  # the head is still coming
            small_json = framer.status == 200 and framer.headers.get("content-type", "").lower().startswith("application/json") \
                and framer.headers.get("content-length", "").isdigit() and int(framer.headers["content-length"]) <= self._limit
            if small_json and not framer.complete:
                return  # its body is still coming
            if small_json:
                data = conn.take_all()
                self._release(conn)
                self._whole(data)
                return
        conn.watch = None
        self._other(self)

    def _release(self, conn: _Conn) -> None:
        conn.watch = None
        self._conn = None
        if conn.framer.complete and conn.framer.keep and conn.sound():
            self._link.release(conn)
        else:
            self._link.discard(conn)
        self._link._slots.release()

    def exchange(self) -> Exchange | None:
        """The response as ``request`` returns it once its head is in; None when the connection closed
        before answering (send it again); ``LinkError`` when the upstream's bytes could not be framed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return None
        conn.watch = None
        if conn.framer.head_done:
            return _Released(_Response(self._link, conn), self._link._slots)
        conn.close()
        self._link._slots.release()
        if conn.framer.failure is not None:
            raise LinkError(conn.framer.failure)
        return None

    def cancel(self) -> None:
        """The request is cancelled: its connection is closed (never reused), its slot freed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.watch = None
            conn.close()
            self._link._slots.release()


def _take_now(slots: asyncio.Semaphore) -> None:
    """A slot of a semaphore that is not ``locked()``: its ``acquire`` then returns without waiting, so
    its coroutine ends at its first step."""
    step = slots.acquire()
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("a free slot had to be waited for")


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


async def collect_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """A body read whole, refused as soon as it passes ``limit`` (never buffered past it)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise LinkError(f"sent a response over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


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
