"""A tiny OTLP/HTTP receiver for the benchmarks: accepts every export on loopback, answers 200.

It parses nothing: the guard's encoding and its POSTs are what is priced, not a collector's work.
It counts the exports it received per path (``/v1/traces``, ``/v1/metrics``), so a run can show the
traces *and* the metrics really left the guard.

  python otlp_sink.py --port-file PATH [--counts-file PATH]   # serves until killed; writes its URL to PATH
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RECEIVED: Counter[str] = Counter()


class _Sink(http.server.BaseHTTPRequestHandler):
    """Accepts any OTLP/HTTP export and answers 200 with an empty protobuf body."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a collector would

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        RECEIVED[self.path] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """Serve in a thread of this process; yields the base URL (``http://127.0.0.1:PORT``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port-file", required=True, help="where to write the sink's base URL once it listens")
    ap.add_argument("--counts-file", help="where to write the exports received per path, at exit")
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with otlp_sink() as url:
        Path(args.port_file).write_text(url)
        stop.wait()
    if args.counts_file:
        Path(args.counts_file).write_text(json.dumps(dict(RECEIVED)))


if __name__ == "__main__":
    main()
