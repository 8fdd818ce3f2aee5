"""The lean HTTP/1.1 client against hostile upstreams on raw sockets, and its framing against h11.

One keep-alive pool is shared by every caller of the guard, so a response framed wrongly hands
one caller's answer to another.  Each fault a hand-written parser can make has its upstream here:
an HTTP/1.0 answer, repeated and conflicting headers, a folded header line, a transfer coding that
merely contains ``chunked``, and bytes smuggled after a response for the next caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_guard.upstreams.framing import FrameError, Framer
from mcp_guard.upstreams.http1 import Http1Link, LinkError

Answer = Callable[[int, int, bytes], bytes]  # (connection number, request number on it, request body) -> bytes to send


class Hostile:
    """A raw-socket upstream: reads request heads (and Content-Length bodies), writes what ``answer`` says."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, served = self.connections, 0
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append((number, body))
                served += 1
                writer.write(self.answer(number, served, body))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def hostile(answer: Answer, close_after: bool = False) -> AsyncIterator[tuple[Http1Link, Hostile]]:
    upstream = Hostile(answer, close_after)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = Http1Link(f"http://127.0.0.1:{port}/mcp", {})
    try:
        yield link, upstream
    finally:
        await link.aclose()
        server.close()
        for w in upstream.writers:
            w.close()


async def exchange(link: Http1Link, body: bytes = b"{}") -> tuple[int, dict[str, str], bytes]:
    answer = await asyncio.wait_for(link.request("POST", {"Content-Type": "application/json"}, body), 5)
    data = await asyncio.wait_for(answer.read(1 << 20), 5)
    return answer.status, answer.headers, data


def ok(body: bytes, version: str = "1.1", extra: str = "") -> bytes:
    return f"HTTP/{version} 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_an_http_1_0_answer_is_never_kept_alive() -> None:
    async with hostile(lambda c, r, b: ok(b'{"n":%d}' % c, version="1.0")) as (link, upstream):
        assert (await exchange(link))[2] == b'{"n":1}'
        assert (await exchange(link))[2] == b'{"n":2}'  # a new connection: 1.0 closes after the response
        assert upstream.connections == 2


async def test_an_http_1_0_answer_asking_for_keep_alive_is_closed_all_the_same() -> None:
    async with hostile(lambda c, r, b: ok(b"{}", version="1.0", extra="Connection: keep-alive\r\n")) as (link, upstream):
        await exchange(link)
        await exchange(link)
        assert upstream.connections == 2


async def test_repeated_headers_are_joined_not_collapsed_to_the_last() -> None:
    answer = ok(b"{}", extra="Mcp-Session-Id: first\r\nMcp-Session-Id: second\r\n")
    async with hostile(lambda c, r, b: answer) as (link, _):
        _, headers, _ = await exchange(link)
        assert headers["mcp-session-id"] == "first, second"  # not an id the guard accepts (a space)


async def test_conflicting_content_lengths_fail_the_request_and_close_the_connection() -> None:
    smuggle = b'{}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: %d\r\n\r\n" % len(smuggle) + smuggle
    async with hostile(lambda c, r, b: answer if c == 1 else ok(b"{}")) as (link, upstream):
        with pytest.raises(LinkError, match=r"broke HTTP/1\.1"):
            await exchange(link)
        assert (await exchange(link))[2] == b"{}"
        assert upstream.connections == 2


async def test_a_folded_header_line_fails_the_request_and_closes_the_connection() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n Content-Length: 99\r\nContent-Length: 2\r\n\r\n{}"
    async with hostile(lambda c, r, b: answer if c == 1 else ok(b"{}")) as (link, upstream):
        with pytest.raises(LinkError, match=r"broke HTTP/1\.1"):
            await exchange(link)
        await exchange(link)
        assert upstream.connections == 2


@pytest.mark.parametrize("coding", ["notchunked", "chunked-ish", "chunked, gzip"])
async def test_a_coding_that_only_contains_chunked_is_not_read_as_chunked(coding: str) -> None:
    raw = b"2\r\n{}\r\n0\r\n\r\n"
    answer = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n".encode() + raw
    async with hostile(lambda c, r, b: answer, close_after=True) as (link, upstream):
        assert (await exchange(link))[2] == raw  # the body runs to the end of the connection, as it is
        await exchange(link)
        assert upstream.connections == 2


async def test_a_final_chunked_coding_is_read_as_chunked_and_kept_alive() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    async with hostile(lambda c, r, b: answer) as (link, upstream):
        assert (await exchange(link))[2] == b"{}"
        assert (await exchange(link))[2] == b"{}"
        assert upstream.connections == 1


@pytest.mark.parametrize("later", [False, True])
async def test_bytes_smuggled_after_a_response_never_reach_the_next_caller(later: bool) -> None:
    def answer(conn: int, number: int, body: bytes) -> bytes:
        real = ok(b'{"conn":%d,"request":%d}' % (conn, number))
        return real if later or number > 1 else real + ok(b'{"for":"someone else"}')

    async with hostile(answer) as (link, upstream):
        first = await exchange(link, b'{"caller":"a"}')
        assert first[2] == b'{"conn":1,"request":1}'
        if later:  # the forged answer arrives while the connection idles in the pool
            upstream.writers[0].write(ok(b'{"for":"someone else"}'))
            await asyncio.sleep(0.2)
        second = await exchange(link, b'{"caller":"b"}')
        assert second[2] == b'{"conn":2,"request":1}'  # B's own answer, on a new connection
        assert upstream.connections == 2


async def test_two_concurrent_callers_each_get_their_own_answer_under_smuggling() -> None:
    def answer(conn: int, number: int, body: bytes) -> bytes:
        return ok(body) + ok(b'{"forged":true}')

    async with hostile(answer) as (link, upstream):
        bodies = [b'{"caller":%d}' % i for i in range(20)]
        for _ in range(3):
            results = await asyncio.gather(*(exchange(link, b) for b in bodies))
            assert [r[2] for r in results] == bodies
        assert upstream.connections >= 60  # every connection was spoiled by its forged tail and closed


async def test_a_response_after_the_connection_is_cut_mid_body_fails_that_request() -> None:
    async with hostile(lambda c, r, b: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", close_after=True) as (link, _):
        with pytest.raises(LinkError, match="closed the connection in the middle of a response"):
            await exchange(link)


async def test_switching_protocols_is_refused() -> None:
    async with hostile(lambda c, r, b: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n") as (link, _):
        with pytest.raises(LinkError, match="switched protocols"):
            await exchange(link)


async def test_interim_answers_are_skipped() -> None:
    async with hostile(lambda c, r, b: b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"{}")) as (link, upstream):
        assert (await exchange(link))[2] == b"{}"
        assert (await exchange(link))[2] == b"{}"
        assert upstream.connections == 1


# --------------------------------------------------------------------------- differential, against h11


def frame(raw: bytes, cuts: list[int]) -> tuple[int, dict[str, str], bytes, bool] | None:
    """Ours: (status, headers, body, keep-alive), or None when refused or incomplete at the end."""
    framer = Framer()
    framer.expect()
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    try:
        for piece in pieces:
            if piece:
                framer.feed(piece)
    except FrameError:
        if not framer.complete:
            return None
    keep = framer.complete and framer.keep and framer.failure is None
    framer.end()  # the upstream closes after sending
    if not framer.complete:
        return None
    return framer.status, framer.headers, b"".join(framer.body), keep


def reference(raw: bytes) -> tuple[int, dict[str, str], bytes, bool] | None:
    """h11 as the client of a POST: the same tuple, or None."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    status, headers, body = 0, {}, b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(b"")  # the upstream closes after sending
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    key = name.decode().lower()
                    headers[key] = f"{headers[key]}, {value.decode('latin-1')}" if key in headers else value.decode("latin-1")
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    extra = conn.trailing_data[0]
    keep = conn.their_state is h11.DONE and conn.our_state is h11.DONE and not extra
    return status, headers, body, keep


TOKEN = st.sampled_from(["X-A", "Content-Type", "Mcp-Session-Id", "Location", "Connection"])
VALUE = st.sampled_from(["1", "two", "application/json", "close", "keep-alive", "a b", ""])


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from(["1.0", "1.1"]))
    status = draw(st.sampled_from([200, 202, 204, 304, 400, 404, 500]))
    lines = [f"HTTP/{version} {status} Reason"]
    for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=5)):
        lines.append(f"{name}: {value}")
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "length-twice", "length-conflict", "chunked", "close", "folded"]))
    if status in (204, 304):
        framing = draw(st.sampled_from(["none", "length-zero"]))
        body = b""
    if framing == "length" or framing == "length-twice":
        lines += [f"Content-Length: {len(body)}"] * (2 if framing == "length-twice" else 1)
        payload = body
    elif framing == "length-conflict":
        lines += [f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 1}"]
        payload = body + b"!"
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        size = draw(st.integers(1, 7))
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)) + b"0\r\n\r\n"
    elif framing == "folded":
        lines += ["X-Folded: start", " continued", f"Content-Length: {len(body)}"]
        payload = body
    elif framing == "length-zero":
        lines.append("Content-Length: 0")
        payload = b""
    else:
        payload = body
    tail = draw(st.sampled_from([b"", b"", ok(b"{}")]))  # sometimes a second, smuggled response
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload + tail


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.integers(0, 400), max_size=4))
def test_framing_agrees_with_h11(raw: bytes, cuts: list[int]) -> None:
    ours = frame(raw, sorted(min(c, len(raw)) for c in cuts))
    theirs = reference(raw)
    if ours is None:  # refusing is always safe; llhttp is stricter only on folded lines and a repeated Content-Length
        head = raw.split(b"\r\n\r\n", 1)[0]
        stricter = b"\r\n continued" in head or head.count(b"Content-Length") > 1
        assert theirs is None or stricter, f"we refused what h11 frames: {raw!r}"
        return
    assert theirs is not None, f"we framed what h11 refuses: {raw!r}"
    assert ours[:3] == theirs[:3], raw
    assert not ours[3] or theirs[3], f"kept alive what h11 would close: {raw!r}"
