"""Instructions the telemetry hooks cost one call on the event loop, alone: a guarded ``tools/call``'s
three scopes (SERVER request, INTERNAL decision, CLIENT upstream call, with their durations and the
decision count), driven in a loop in this process with traces and metrics exported over OTLP/HTTP
to a sink of its own, under callgrind.

  python telemetry_loop.py [--calls 3000]

runs ``valgrind --tool=callgrind --separate-threads=yes`` over ``telemetry_loop.py --inner N`` for
N = 0 and N = ``--calls`` and prints the difference per call: of the main thread (what a call
waits for) and of all threads (the export threads' encoding and POSTs too).  The guard's own
pipeline, audit and upstream I/O are not in it: this prices the hooks and nothing else.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def inner(calls: int, endpoint: str) -> None:
    from mcp_guard.decision import Outcome, Verdict
    from mcp_guard.identity import Principal
    from mcp_guard.jsonrpc import Era
    from mcp_guard.request import RequestContext, Target
    from mcp_guard.telemetry import Settings, start

    settings = Settings(traces="otlp", metrics="otlp", traces_endpoint=f"{endpoint}/v1/traces",
                        metrics_endpoint=f"{endpoint}/v1/metrics", service_name="loop")
    tel = start(settings)

    class Up:
        name = "upstream"
        protocol_version = "2025-11-25"
        config = object()

    up = Up()
    who = Principal("alice@example.com", ("planner", "coder"), "benchmark", True, "g-1")
    target = Target("upstream_echo", "upstream", "echo", "upstream/echo", {"name": "upstream_echo"}, None)
    verdict = Verdict(Outcome.ALLOW, "allowed by rule echo", ("bench",), ("echo",))
    answer = {"jsonrpc": "2.0", "id": 7, "result": {"content": [], "isError": False}}

    def one(i: int) -> None:
        message = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                   "params": {"name": "upstream_echo", "arguments": {"text": "hi"}}}
        req = RequestContext("s-1", who, None, Era.LEGACY, "2025-11-25", message, {}, {})
        with tel.request(req) as traced:
            req.target = target
            with tel.decision(req):
                req.verdict = verdict
            with tel.upstream_call(up, "tools/call", {"name": "echo", "arguments": {"text": "hi"}}) as call:
                call.inject({"name": "echo", "arguments": {"text": "hi"}})
                noted = call.noting(None)
                if noted is not None:
                    noted(i)
                call.respond(answer)
            traced.respond(answer)

    for i in range(200):  # warm the caches
        one(i)
    for i in range(calls):
        one(i)
    tel.shutdown()


def count(calls: int, endpoint: str, out: Path) -> tuple[int, int]:
    """(main thread, all threads) instructions of one ``--inner calls`` run."""
    tag = f"n{calls}"
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={out}/{tag}.%p", sys.executable, __file__, "--inner", str(calls),
                    "--endpoint", endpoint], check=True, stderr=subprocess.DEVNULL)
    dumps = sorted(out.glob(f"{tag}.*-*"))  # one file per thread, -01 the main one
    totals = [next(int(m.group(1)) for line in d.open() if (m := re.match(r"(?:summary|totals): (\d+)", line)))
              for d in dumps]
    return totals[0], sum(totals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner is not None:
        inner(args.inner, args.endpoint)
        return
    from otlp_sink import otlp_sink

    out = Path(tempfile.mkdtemp(prefix="telemetry-loop-"))
    with otlp_sink() as endpoint:
        started = time.monotonic()
        main0, all0 = count(0, endpoint, out)
        main1, all1 = count(args.calls, endpoint, out)
    print(json.dumps({"calls": args.calls, "main_thread_per_call": round((main1 - main0) / args.calls),
                      "all_threads_per_call": round((all1 - all0) / args.calls),
                      "seconds": round(time.monotonic() - started, 1), "dumps": str(out)}))


if __name__ == "__main__":
    main()
