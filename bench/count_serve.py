"""Instructions ``mcp-guard serve`` executes per request, beside the direct upstream's own, counted
by valgrind (callgrind): a paired, load-independent ratio for each era.

Starts the upstream (``echo_server.py --http``) and the guard (``guard_full`` of
``serve_bench.py``: the 200-rule policy, a 2-link bearer grant chain, the hash-chained audit log,
OTLP traces and metrics to a sink of its own), the guard under callgrind and, with ``--direct``,
the upstream too (its start under valgrind takes many minutes on a loaded machine); then for each era makes
``--warmup`` sequential ``tools/call echo`` requests through the guard on one keep-alive
connection, zeroes both processes' counters, makes ``--calls`` more, and dumps.  Prints one JSON
line per era: the guard's instructions per request (all threads, and its main thread alone) and
the upstream's, and their ratio.  The same requests sent to the upstream directly are counted
too with ``--direct``, so "guard ÷ direct" compares like with like.

  python count_serve.py [--calls 300] [--warmup 150] [--eras legacy,modern] [--direct] [--tree DIR]

``--syscalls`` counts the guard's system calls per request instead (``strace -c -f`` attached for
the counted requests, no valgrind): writes, reads and loop wake-ups that instruction counts do not
see, and that no load moves either.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from otlp_sink import otlp_sink
from serve_bench import GUARD, HERE, PY, ROOT, Bench, free_port, open_session, strace_counts, wait_port


def summary(out: Path, pid: int, part: int) -> tuple[int, int]:
    """(all threads, main thread) instructions of dump ``part`` of ``pid``."""
    dumps = sorted(out.glob(f"callgrind.out.{pid}.{part}-*"))
    totals = [next(int(m.group(1)) for line in d.open() if (m := re.match(r"summary: (\d+)", line))) for d in dumps]
    return sum(totals), totals[0]


def control(action: str, *pids: int) -> None:
    for pid in pids:
        subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--eras", default="legacy,modern")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the source tree (holding mcp_guard/) to run (default: this one)")
    ap.add_argument("--direct", action="store_true", help="count the upstream's instructions too (under valgrind)")
    ap.add_argument("--out", type=Path, help="where the callgrind files go (default: a temporary directory)")
    ap.add_argument("--syscalls", action="store_true", help="count the guard's system calls per request (strace), not instructions")
    args = ap.parse_args()
    if args.syscalls:
        syscalls(args)
        return
    out = (args.out or Path(tempfile.mkdtemp(prefix="count-serve-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    grind = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}/callgrind.out.%p"]
    with otlp_sink() as sink:
        b = Bench(out, sink)
        b.env["PYTHONPATH"] = f"{args.tree.resolve()}:{HERE}"  # this tree's mcp_guard, whatever the venv has installed
        try:
            up_port = free_port()
            upstream = b.spawn([*(grind if args.direct else []), PY, str(HERE / "echo_server.py"), "--http", str(up_port)])
            b.upstream_url = f"http://127.0.0.1:{up_port}/mcp"
            wait_port(up_port, [upstream], timeout=3600)
            port = free_port()
            config = b.guard_config("guard_full", full=True, state=f"sqlite:///{out / 'guard_full' / 'state.db'}")
            guard = b.spawn([*grind, str(GUARD), "serve", "--port", str(port), "--log-level", "WARNING", "--config", str(config)])
            wait_port(port, [guard], timeout=3600)  # valgrind: minutes, on a loaded machine many
            parts = {guard.pid: 0, upstream.pid: 0}
            for era in [e for e in args.eras.split(",") if e]:
                row: dict[str, Any] = {"era": era, "calls": args.calls}
                targets = [("guard", port, "upstream_echo", b.token)] + ([("direct", up_port, "echo", "-")] if args.direct else [])
                for target, tport, tool, token in targets:
                    pids = ((guard.pid, upstream.pid) if args.direct else (guard.pid,)) if target == "guard" else (upstream.pid,)
                    send = requester(tport, era, tool, token)
                    for i in range(args.warmup):
                        send(i)
                    time.sleep(2)
                    control("-z", *pids)
                    for i in range(args.calls):
                        send(args.warmup + i)
                    time.sleep(2)
                    control("-d", *pids)
                    for pid in pids:
                        parts[pid] += 1
                    if target == "guard":
                        total, main_thread = summary(out, guard.pid, parts[guard.pid])
                        row["guard"] = round(total / args.calls)
                        row["guard_main_thread"] = round(main_thread / args.calls)
                        if args.direct:
                            row["upstream_behind_guard"] = round(summary(out, upstream.pid, parts[upstream.pid])[0] / args.calls)
                    else:
                        row["direct"] = round(summary(out, upstream.pid, parts[upstream.pid])[0] / args.calls)
                if args.direct:
                    row["guard_over_direct"] = round(row["guard"] / row["direct"], 2)
                print(json.dumps(row), flush=True)
        finally:
            b.close()


def syscalls(args: argparse.Namespace) -> None:
    """One JSON line per era: the guard's system calls per request, in all and by name."""
    out = (args.out or Path(tempfile.mkdtemp(prefix="count-serve-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with otlp_sink() as sink:
        b = Bench(out, sink)
        b.env["PYTHONPATH"] = f"{args.tree.resolve()}:{HERE}"
        try:
            [guard] = b.start(["guard_full"])
            for era in [e for e in args.eras.split(",") if e]:
                send = requester(guard.port, era, guard.tool, guard.token)
                for i in range(args.warmup):
                    send(i)
                table = out / f"strace-{era}.txt"
                tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(table), "-p", str(guard.procs[0].pid)])
                time.sleep(2)  # attached to every thread
                for i in range(args.calls):
                    send(args.warmup + i)
                time.sleep(1)
                tracer.send_signal(signal.SIGINT)
                tracer.wait(60)
                counts = strace_counts(table)
                per = {k: round(v / args.calls, 2) for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v >= args.calls / 10}
                print(json.dumps({"era": era, "calls": args.calls, "syscalls_per_request": round(sum(counts.values()) / args.calls, 2),
                                  "by_name": per}), flush=True)
        finally:
            b.close()


def requester(port: int, era: str, tool: str, token: str) -> Any:
    """``send(i)``: one ``tools/call`` of ``tool`` on a keep-alive connection, as wrk's script sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token != "-":
        headers["Authorization"] = f"Bearer {token}"
    meta = ""
    if era == "modern":
        headers.update({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool})
        meta = (',"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
                '"io.modelcontextprotocol/clientInfo":{"name":"wrk","version":"4"},'
                '"io.modelcontextprotocol/clientCapabilities":{}}')
    else:
        from serve_bench import Target

        headers["Mcp-Session-Id"] = open_session(Target("t", port, token=token))
        headers["MCP-Protocol-Version"] = "2025-11-25"

    def send(i: int) -> None:
        body = '{"jsonrpc":"2.0","id":' + str(i) + ',"method":"tools/call","params":{"name":"' + tool + '","arguments":{"text":"hello"}' + meta + "}}"
        for _ in range(600):  # under valgrind the guard may listen well before its upstream connection is up
            conn.request("POST", "/mcp", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            if i > 0 or b"has not started" not in data:
                break
            time.sleep(1)
        if resp.status != 200 or b'"isError":false' not in data:
            sys.exit(f"{era} call {i} to port {port} failed: {resp.status} {data[:300]!r}")

    return send


if __name__ == "__main__":
    main()
