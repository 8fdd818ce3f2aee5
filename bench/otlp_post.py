"""Instructions one OTLP/HTTP POST costs the guard's span exporter, per transport, counted by
valgrind (callgrind) against ``otlp_sink.py`` on loopback.

  python otlp_post.py [--posts 200] [--size 5000] [--transports guard,urllib3,requests]

For each transport, runs ``otlp_post.py --inner`` under callgrind twice (5 warm-up POSTs, then 0 or
``--posts`` POSTs of ``--size`` bytes through ``LightOTLPSpanExporter.export_bytes``: the SDK's
OTLP client with its headers, retries and time-out) and prints the difference per POST.
``guard`` is what ``telemetry.transport.lean_transport`` picks for a plain ``http://`` collector,
``urllib3`` the SDK's ``Urllib3HTTPTransport``, ``requests`` the SDK's default.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def inner(posts: int, size: int, endpoint: str, transport: str) -> None:
    from mcp_guard.telemetry.export import LightOTLPSpanExporter
    from mcp_guard.telemetry.transport import lean_transport

    url = f"{endpoint}/v1/traces"
    chosen: dict[str, object] = {}
    if transport == "guard":
        chosen = lean_transport(url, True)
    elif transport == "urllib3":
        from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport

        chosen = {"_transport": Urllib3HTTPTransport()}
    exporter = LightOTLPSpanExporter(endpoint=url, timeout=3, **chosen)  # type: ignore[arg-type]
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for _ in range(5 + posts):
        if not exporter.export_bytes(body, 1):
            sys.exit("the sink refused a POST")


def count(posts: int, size: int, endpoint: str, transport: str, out: Path) -> int:
    tag = f"{transport}-{posts}"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/{tag}.%p", sys.executable, __file__,
                    "--inner", "--posts", str(posts), "--size", str(size), "--endpoint", endpoint, "--transports", transport],
                   check=True, stderr=subprocess.DEVNULL)
    dump = next(out.glob(f"{tag}.*"))
    return next(int(m.group(1)) for line in dump.open() if (m := re.match(r"(?:summary|totals): (\d+)", line)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=200)
    ap.add_argument("--size", type=int, default=5000, help="bytes per POST")
    ap.add_argument("--transports", default="guard,urllib3")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.posts, args.size, args.endpoint, args.transports)
        return
    from otlp_sink import otlp_sink

    out = Path(tempfile.mkdtemp(prefix="otlp-post-"))
    per_post = {}
    with otlp_sink() as endpoint:
        for transport in args.transports.split(","):
            base = count(0, args.size, endpoint, transport, out)
            per_post[transport] = round((count(args.posts, args.size, endpoint, transport, out) - base) / args.posts)
    print(json.dumps({"posts": args.posts, "size": args.size, "instructions_per_post": per_post, "dumps": str(out)}))


if __name__ == "__main__":
    main()
