"""Instructions the telemetry hooks cost one call on the event loop, alone: a guarded ``tools/call``'s
three scopes (SERVER request, INTERNAL decision, CLIENT upstream call, with their durations and the
decision count), driven in a loop in this process with traces and metrics exported over OTLP/HTTP
to a sink of its own, under callgrind.

  python telemetry_loop.py [--calls 3000]
  python telemetry_loop.py --encode [--calls 3000]

runs ``valgrind --tool=callgrind --separate-threads=yes`` over ``telemetry_loop.py --inner N`` for
N = 0 and N = ``--calls`` and prints the difference per call: of the main thread (what a call
waits for) and of all threads (the export threads' encoding and POSTs too), and the hooks' own
share of the main thread's (against the same loop with telemetry off).  After its warm-up it
settles the heap as the guard does once started (``app.settle_heap``: the start-up heap frozen,
the guard's young-generation threshold), so the collector's passes are the guard's.  The flush at shutdown
runs on a thread of its own, so the main thread's figure is the event loop's share alone.  The guard's own
pipeline, audit and upstream I/O are not in it: this prices the hooks and nothing else.

``--encode`` prices the span export thread's encoding alone: the records of ``--calls`` calls are
collected (no export thread, no POST), then encoded to one OTLP request per 512 spans, by each
path the tree has (``light``: a ``LightSpan`` per record through ``SpanEncoder``; ``wire``:
``telemetry.wire``, when the tree has it); each is counted against a run of the same path that
collects as many records and encodes only the warm-up's.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def inner(calls: int, endpoint: str, encode: str | None = None) -> None:
    from mcp_guard.config.model import UpstreamConfig
    from mcp_guard.decision import Outcome, Verdict
    from mcp_guard.identity import Principal
    from mcp_guard.jsonrpc import Era
    from mcp_guard.request import RequestContext, Target
    from mcp_guard.telemetry import Settings, start

    settings = Settings(traces="otlp", metrics="otlp", traces_endpoint=f"{endpoint}/v1/traces",
                        metrics_endpoint=f"{endpoint}/v1/metrics", service_name="loop")
    tel = start(settings if encode != "off" else Settings())  # off: the loop's own cost, to subtract
    collected: list[object] = []
    if encode not in (None, "off"):  # the records only: no export thread, no metrics, no POST
        tel.shutdown()
        tel.recorder.end = collected.append  # type: ignore[attr-defined]
        tel.recorder.server_duration = tel.recorder.client_duration = tel.recorder.decisions = None  # type: ignore[attr-defined]

    class Up:
        name = "upstream"
        protocol_version = "2025-11-25"
        config = UpstreamConfig("upstream", sys.executable)  # as the guard's: ``url`` is None for a stdio upstream

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
    from mcp_guard.app import settle_heap

    settle_heap()  # the collector as the guard runs it: the start-up heap frozen, its young-generation threshold
    if encode not in (None, "off"):
        warm, collected[:] = list(collected), []
        for i in range(calls):
            one(i)
        _encode(tel.recorder, encode, warm, collected)  # type: ignore[attr-defined]
        return
    for i in range(calls):
        one(i)
    # the flush at shutdown (spans still queued, the metrics folded and sent) runs on a thread of its
    # own: the main thread's count is the hooks' work on the loop and nothing else
    closing = threading.Thread(target=tel.shutdown, name="closing")
    closing.start()
    closing.join()


def _encode(recorder: Any, path: str, warm: list[Any], records: list[Any]) -> None:
    """Encode ``warm`` (the path's caches filled), then ``records`` unless ``path`` ends in "-warm" (the
    baseline the same path's run is counted against)."""
    from mcp_guard.telemetry.export import SpanEncoder

    resource, scope = recorder.resource, recorder.scope
    send: Callable[[list[Any]], bytes]
    if path.startswith("wire"):
        from mcp_guard.telemetry.wire import RecordEncoder  # type: ignore[import-not-found, unused-ignore]

        send = RecordEncoder(resource, scope).records
    else:
        light = SpanEncoder(resource, scope)

        def send(batch: list[Any]) -> bytes:
            return light.request([r.light() for r in batch])

    send(warm)
    if not path.endswith("-warm"):
        for i in range(0, len(records), 512):
            send(records[i:i + 512])


def count(calls: int, endpoint: str, out: Path, encode: str | None = None) -> tuple[int, int]:
    """(main thread, all threads) instructions of one ``--inner calls`` run."""
    tag = f"n{calls}{encode or ''}"
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={out}/{tag}.%p", sys.executable, __file__, "--inner", str(calls),
                    "--endpoint", endpoint, *(["--path", encode] if encode else [])], check=True, stderr=subprocess.DEVNULL)
    dumps = sorted(out.glob(f"{tag}.*-*"))  # one file per thread, -01 the main one
    totals = [next(int(m.group(1)) for line in d.open() if (m := re.match(r"(?:summary|totals): (\d+)", line)))
              for d in dumps]
    return totals[0], sum(totals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--encode", action="store_true", help="price the span encoding alone, per path")
    args = ap.parse_args()
    if args.inner is not None:
        inner(args.inner, args.endpoint, args.path)
        return
    if args.encode:
        out = Path(tempfile.mkdtemp(prefix="telemetry-encode-"))
        paths = ["light"] + (["wire"] if (HERE.parent / "mcp_guard" / "telemetry" / "wire.py").exists() else [])
        per_call = {}
        for p in paths:
            base = count(args.calls, "http://127.0.0.1:9", out, f"{p}-warm")[0]
            per_call[f"{p}_per_call"] = round((count(args.calls, "http://127.0.0.1:9", out, p)[0] - base) / args.calls)
        print(json.dumps({"calls": args.calls, **per_call}))
        return
    from otlp_sink import otlp_sink

    out = Path(tempfile.mkdtemp(prefix="telemetry-loop-"))
    with otlp_sink() as endpoint:
        started = time.monotonic()
        main0, all0 = count(0, endpoint, out)
        main1, all1 = count(args.calls, endpoint, out)
        off = count(args.calls, endpoint, out, "off")[0] - count(0, endpoint, out, "off")[0]
    print(json.dumps({"calls": args.calls, "main_thread_per_call": round((main1 - main0) / args.calls),
                      "hooks_on_main_thread_per_call": round((main1 - main0 - off) / args.calls),
                      "all_threads_per_call": round((all1 - all0) / args.calls),
                      "seconds": round(time.monotonic() - started, 1), "dumps": str(out)}))


if __name__ == "__main__":
    main()
