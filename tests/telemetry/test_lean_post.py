"""The lean OTLP/HTTP transport: the SDK urllib3 transport's request byte for byte, the SDK client's
retries kept, and every way a collector can misbehave ending in a failed export, never a hang or
an exception."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures import free_port
from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

from mcp_guard.config.env import telemetry_settings
from mcp_guard.telemetry.export import LightOTLPSpanExporter
from mcp_guard.telemetry.post import CollectorConnectionError, LeanTransport
from mcp_guard.telemetry.transport import lean_transport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
Answer = Callable[[socket.socket, bytes], bool]  # writes its answer to a request; False: close the connection


def reply(raw: bytes, *, close: bool = False) -> Answer:
    def answer(conn: socket.socket, request: bytes) -> bool:
        conn.sendall(raw)
        return not close
    return answer


class RawCollector:
    """A loopback collector that records every request's raw bytes and answers from a script
    (``OK`` once the script runs out); one thread per connection, keep-alive."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.script: list[Answer] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._server.accept()[0]
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                while len(rest) < length:
                    rest += conn.recv(65536)
                request, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
                self.requests.append(request)
                answer = self.script.pop(0) if self.script else reply(OK)
                try:
                    if not answer(conn, request):
                        return
                except OSError:
                    return

    def close(self) -> None:
        self._server.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def collector() -> Iterator[RawCollector]:
    c = RawCollector()
    yield c
    c.close()


def exporter(url: str, transport: object | None = None, **kwargs: object) -> LightOTLPSpanExporter:
    chosen = lean_transport(url, True) if transport is None else {"_transport": transport}
    return LightOTLPSpanExporter(endpoint=url, timeout=kwargs.pop("timeout", 3), **chosen, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the same bytes


def without_gzip_time(request: bytes) -> bytes:
    """The request with its gzip body's MTIME field (bytes 4-7 of the gzip header) zeroed: the SDK
    compresses each export with the current second in it, so two exports straddling a second
    differ there and nowhere else."""
    head, sep, body = request.partition(b"\r\n\r\n")
    if b"content-encoding: gzip" not in head.lower() or body[:2] != b"\x1f\x8b":
        return request
    return head + sep + body[:4] + b"\0\0\0\0" + body[8:]


@pytest.mark.parametrize("env", [
    {},
    {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=a%20b,Authorization=Bearer%20t"},
    {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=k", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"},
    {"OTEL_EXPORTER_OTLP_COMPRESSION": "deflate"},
])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST"])
def test_the_request_is_the_urllib3_transports_byte_for_byte(collector: RawCollector, monkeypatch: pytest.MonkeyPatch,
                                                             env: dict[str, str], host: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = f"http://{host}:{collector.port}/v1/traces?tenant=a"
    lean = exporter(url)
    assert isinstance(lean._client._transport, LeanTransport)
    reference = exporter(url, Urllib3HTTPTransport())
    body = bytes(range(256)) * 40
    for each in (lean, reference, lean):  # the second lean POST reuses its connection and cached head
        assert each.export_bytes(body, 1)
    first, expected, again = (without_gzip_time(r) for r in collector.requests)
    assert first == expected == again
    if "gzip" in str(env):
        assert b"content-encoding: gzip" in first.lower() and gzip.decompress(first.partition(b"\r\n\r\n")[2]) == body
    assert collector.connections == 2  # one kept-alive connection per exporter
    lean.shutdown()
    reference.shutdown()


def test_the_metric_exporter_posts_the_same_bytes_too(collector: RawCollector) -> None:
    url = collector.url.replace("traces", "metrics")
    lean = OTLPMetricExporter(endpoint=url, timeout=3, **lean_transport(url, True))
    reference = OTLPMetricExporter(endpoint=url, timeout=3, _transport=Urllib3HTTPTransport())
    for each in (lean, reference):
        assert each._client.export(b"\x0a\x00").success
    assert collector.requests[0] == collector.requests[1]


@pytest.mark.parametrize("headers", [
    {"host": "elsewhere.example"},  # a framing header the operator set: urllib3 writes it its own way
    {"x-bad": "a\r\nx-injected: 1"},  # http.client refuses it, so the lean path must not write it
    {"x-latin": "caf\u00e9", "x-wide": "\u2603"},  # not latin-1
])
def test_headers_it_cannot_write_the_same_way_go_through_urllib3(collector: RawCollector, headers: dict[str, str]) -> None:
    lean = exporter(collector.url, headers=headers)
    reference = exporter(collector.url, Urllib3HTTPTransport(), headers=headers)
    results = [each.export_bytes(b"\x0a\x00", 1) for each in (lean, reference)]
    assert results[0] == results[1]
    assert len(collector.requests) == 2 * results[0]
    if results[0]:
        assert collector.requests[0] == collector.requests[1]
    assert not any(b"x-injected" in r for r in collector.requests)


# --------------------------------------------------------------------------- where it is used


def test_only_a_plain_http_collector_without_credentials_gets_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(lean_transport("http://collector.example:4318/v1/traces", True)["_transport"], LeanTransport)
    for url in ("https://collector.example:4318/v1/traces", "http://user:secret@collector.example:4318/v1/traces", "", None):
        assert lean_transport(url, True) == {}
    assert lean_transport("http://collector.example:4318/v1/traces", False) == {}


@pytest.mark.parametrize("variable", ["OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
                                      "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
                                      "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER"])
def test_a_credential_provider_keeps_the_sdk_transport(tmp_path: Path, variable: str) -> None:
    assert telemetry_settings(None, {"HOME": str(tmp_path), variable: "signer"}).plain_http is False


# --------------------------------------------------------------------------- the client's retries, kept


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_busy_collector_is_retried_after_its_retry_after(collector: RawCollector, status: int) -> None:
    collector.script = [reply(f"HTTP/1.1 {status} Busy\r\nretry-after: 0\r\nContent-Length: 0\r\n\r\n".encode())]
    lean = exporter(collector.url)
    assert lean.export_bytes(b"\x0a\x00", 1)
    assert len(collector.requests) == 2 and collector.connections == 1


def test_a_refusal_is_not_retried(collector: RawCollector) -> None:
    collector.script = [reply(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!")]
    assert exporter(collector.url).export_bytes(b"\x0a\x00", 1) is False
    assert len(collector.requests) == 1


def test_a_connection_the_collector_dropped_is_opened_again(collector: RawCollector) -> None:
    collector.script = [reply(OK, close=True)]  # answers, then closes the kept connection
    lean = exporter(collector.url)
    assert lean.export_bytes(b"\x0a\x00", 1)
    time.sleep(0.1)
    assert lean.export_bytes(b"\x0a\x01", 1)
    assert len(collector.requests) == 2 and collector.connections == 2


def test_a_request_the_collector_never_answered_is_sent_again_once(collector: RawCollector) -> None:
    collector.script = [lambda conn, request: False]  # reads it, closes without an answer
    assert exporter(collector.url).export_bytes(b"\x0a\x00", 1)
    assert len(collector.requests) == 2 and collector.requests[0] == collector.requests[1]


def test_a_collector_that_is_not_there_fails_the_export() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    transport = LeanTransport(url)
    result = transport.request("POST", url, headers={"user-agent": "t"}, timeout=1, data=b"")
    assert isinstance(result.error, CollectorConnectionError) and transport.is_connection_error(result.error)
    started = time.monotonic()
    assert exporter(url, timeout=1).export_bytes(b"", 0) is False
    assert time.monotonic() - started < 30  # the client's backoff ends at its deadline, not never


def test_a_silent_collector_times_out_and_is_not_retried(collector: RawCollector) -> None:
    collector.script = [lambda conn, request: (time.sleep(3), True)[1]]
    transport = LeanTransport(collector.url)
    result = transport.request("POST", collector.url, headers={"user-agent": "t"}, timeout=0.5, data=b"")
    assert isinstance(result.error, TimeoutError) and not transport.is_connection_error(result.error)
    assert len(collector.requests) == 1


# --------------------------------------------------------------------------- how an answer is framed


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc",
])
def test_answers_are_framed_and_the_connection_kept(collector: RawCollector, raw: bytes) -> None:
    collector.script = [reply(raw)]
    transport = LeanTransport(collector.url)
    result = transport.request("POST", collector.url, headers={"user-agent": "t"}, timeout=3, data=b"x")
    assert result.status_code == 200 and result.reason == "OK" and result.error is None
    assert result.content() in (b"abc", b"")
    if b"X-A" in raw:
        assert result.headers()["x-a"] == "1, 2"
    assert transport.request("POST", collector.url, headers={"user-agent": "t"}, timeout=3, data=b"y").status_code == 200
    assert collector.connections == 1
    transport.close()


def test_a_body_that_runs_to_the_end_of_the_connection(collector: RawCollector) -> None:
    collector.script = [reply(b"HTTP/1.1 200 OK\r\n\r\npartial-success", close=True)]
    transport = LeanTransport(collector.url)
    result = transport.request("POST", collector.url, headers={"user-agent": "t"}, timeout=3, data=b"x")
    assert result.status_code == 200 and result.content() == b"partial-success"


@pytest.mark.parametrize("raw", [
    b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",  # conflicting lengths
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",  # headers over the limit
])
def test_an_answer_that_cannot_be_framed_fails_the_request_and_drops_the_connection(collector: RawCollector, raw: bytes) -> None:
    collector.script = [reply(raw, close=True), reply(raw, close=True)]
    transport = LeanTransport(collector.url)
    result = transport.request("POST", collector.url, headers={"user-agent": "t"}, timeout=3, data=b"x")
    assert result.status_code is None and isinstance(result.error, CollectorConnectionError)
    assert transport._sock is None
    assert exporter(collector.url).export_bytes(b"\x0a\x00", 1)  # the next request is answered (OK) again


def test_close_drops_the_connection(collector: RawCollector) -> None:
    lean = exporter(collector.url)
    assert lean.export_bytes(b"\x0a\x00", 1)
    transport = lean._client._transport
    assert isinstance(transport, LeanTransport) and transport._sock is not None
    lean.shutdown()
    assert transport._sock is None


def test_close_ends_a_request_still_waiting_for_a_silent_collector(collector: RawCollector) -> None:
    collector.script = [lambda conn, request: (time.sleep(5), True)[1]]
    transport = LeanTransport(collector.url)
    results: list[object] = []
    waiting = threading.Thread(target=lambda: results.append(
        transport.request("POST", collector.url, headers={"user-agent": "t"}, timeout=30, data=b"x")))
    waiting.start()
    while not collector.requests:
        time.sleep(0.01)
    transport.close()  # does not wait for the request's 30 s
    waiting.join(10)
    assert not waiting.is_alive()
    (result,) = results
    assert isinstance(result.error, CollectorConnectionError) and transport._sock is None  # type: ignore[attr-defined]
