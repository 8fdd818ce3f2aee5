"""The OTLP/HTTP exporters POST through the guard's lean transport only where the environment's
proxy, ``.netrc`` and TLS settings cannot apply; what reaches the collector is the same."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fixtures import free_port

from mcp_guard.config.env import telemetry_settings
from mcp_guard.telemetry.export import LightOTLPSpanExporter
from mcp_guard.telemetry.post import LeanTransport
from mcp_guard.telemetry.transport import lean_transport

HTTP = "http://collector.example:4318/v1/traces"


def _plain(env: dict[str, str]) -> bool:
    return telemetry_settings(None, env).plain_http


def test_a_plain_http_collector_gets_the_lean_transport(tmp_path: Path) -> None:
    plain = _plain({"HOME": str(tmp_path)})
    assert plain is (sys.platform != "darwin")
    if plain:
        assert isinstance(lean_transport(HTTP, plain).get("_transport"), LeanTransport)


@pytest.mark.parametrize("endpoint", ["https://collector.example:4318/v1/traces", None, ""])
def test_tls_or_an_unknown_endpoint_keeps_the_sdk_default(endpoint: str | None) -> None:
    assert lean_transport(endpoint, True) == {}


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NETRC"])
def test_a_proxy_or_netrc_variable_keeps_the_sdk_default(tmp_path: Path, variable: str) -> None:
    plain = _plain({"HOME": str(tmp_path), variable: "http://proxy.example:3128"})
    assert plain is False and lean_transport(HTTP, plain) == {}


@pytest.mark.parametrize("name", [".netrc", "_netrc"])
def test_a_netrc_file_keeps_the_sdk_default(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("machine collector.example login a password b\n")
    assert _plain({"HOME": str(tmp_path)}) is False


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    got: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", got
    finally:
        server.shutdown()
        server.server_close()


def test_both_transports_post_the_same_request(collector: tuple[str, list[tuple[str, dict[str, str], bytes]]]) -> None:
    endpoint, got = collector
    lean = LightOTLPSpanExporter(endpoint=endpoint, timeout=5, headers={"x-tenant": "a"}, **lean_transport(endpoint, True))
    default = LightOTLPSpanExporter(endpoint=endpoint, timeout=5, headers={"x-tenant": "a"})
    assert lean.export_bytes(b"\x0a\x00", 1) and default.export_bytes(b"\x0a\x00", 1)
    (path_a, head_a, body_a), (path_b, head_b, body_b) = got
    assert (path_a, body_a) == (path_b, body_b) == ("/v1/traces", b"\x0a\x00")
    for header in ("content-type", "x-tenant", "content-length", "user-agent"):
        assert head_a.get(header) == head_b.get(header), header
    lean.shutdown()
    default.shutdown()


def test_a_collector_that_is_not_there_fails_the_export_without_raising() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
    assert LightOTLPSpanExporter(endpoint=endpoint, timeout=1, **lean_transport(endpoint, True)).export_bytes(b"", 0) is False
