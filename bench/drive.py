"""Benchmark driver: an MCP client (mcp==2.3.0 ClientSession over stdio).

Launches ANY stdio MCP server command given after ``--``, initializes, then
measures:
  (a) tools/list latency          (median of --list-n, default 50)
  (b) sequential tools/call echo  (p50/p99 over --seq-n, default 2000)
  (c) throughput, --conc (16) calls in flight, --conc-n (3000) calls total
and prints ONE JSON line on stdout.

It also samples CPU time (Linux /proc, best effort, 10 ms tick resolution)
of the launched process (``*_top_cpu_us``: the proxy, when one is under test)
and of its whole process tree (``*_server_cpu_us``: proxy + upstream), per
call, plus this client's own CPU (``*_client_cpu_us``); on a 2-core box CPU
per call is steadier than latency.  ``--otel-memory`` installs an OTel SDK
tracer provider with an in-memory exporter in this client (needs
opentelemetry-sdk) to price the SDK's client spans.

Usage:
  python drive.py [--label L] [--tool echo] [--mode legacy|modern|auto] -- CMD [ARGS...]
e.g.
  python drive.py --label direct -- python echo_server.py --tools 20
  python drive.py --label guard  -- mcp-guard run ... -- python echo_server.py

The server inherits this process's full environment (the SDK's stdio_client
would otherwise pass only HOME/LOGNAME/PATH/SHELL/TERM/USER).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------------------------------------------------------------- CPU probes
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime ticks) for every visible process (Linux only)."""
    table: dict[int, tuple[int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode("ascii", "replace")
        except OSError:
            continue
        rest = data[data.rfind(")") + 2 :].split()
        # rest[0]=state rest[1]=ppid ... rest[11]=utime rest[12]=stime
        try:
            table[int(name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
        except (IndexError, ValueError):
            continue
    return table


def server_tree_cpu_s() -> tuple[float, float] | None:
    """CPU seconds used so far by (all descendants, direct children only) of this process.

    The direct child is the command we launched (the proxy, when one is under
    test); the rest of the tree is whatever it launched (the upstream server).
    """
    table = _proc_table()
    if not table:
        return None
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    top = sum(table[p][1] for p in children.get(me, []))
    total, stack = 0, list(children.get(me, []))
    while stack:
        pid = stack.pop()
        total += table[pid][1]
        stack.extend(children.get(pid, []))
    return total / _CLK, top / _CLK


class CpuWindow:
    def __init__(self) -> None:
        self.server0 = server_tree_cpu_s()
        self.client0 = time.process_time()

    def per_call_us(self, calls: int) -> tuple[float | None, float | None, float]:
        """(server tree CPU, launched process CPU, client CPU) in microseconds per call."""
        s1 = server_tree_cpu_s()
        c1 = time.process_time()
        cli = (c1 - self.client0) / calls * 1e6
        if s1 is None or self.server0 is None:
            return None, None, cli
        tree = (s1[0] - self.server0[0]) / calls * 1e6
        top = (s1[1] - self.server0[1]) / calls * 1e6
        return round(tree, 1), round(top, 1), round(cli, 1)


# ---------------------------------------------------------------- stats
def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def ms(ns: float) -> float:
    return round(ns / 1e6, 4)


# ---------------------------------------------------------------- driver
def install_memory_tracer():
    """Install an OTel SDK TracerProvider + in-memory exporter (needs opentelemetry-sdk)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def run(args: argparse.Namespace, cmd: list[str]) -> dict:
    exporter = install_memory_tracer() if args.otel_memory else None
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
    errlog = sys.stderr if args.server_stderr is None else open(args.server_stderr, "a")  # noqa: SIM115, ASYNC230
    # basename any absolute path so results carry no machine-local paths
    shown = " ".join(os.path.basename(c) if os.path.isabs(c) or i == 0 else c for i, c in enumerate(cmd))
    out: dict = {"label": args.label, "cmd": shown}
    t_spawn = time.perf_counter_ns()
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        if args.mode == "legacy":
            init = await session.initialize()
            out["protocol"] = init.protocol_version
        elif args.mode == "modern":
            await session.discover()
            out["protocol"] = session.protocol_version
        else:  # auto
            try:
                await session.discover()
            except Exception:
                await session.initialize()
            out["protocol"] = session.protocol_version
        out["init_ms"] = ms(time.perf_counter_ns() - t_spawn)

        # warm-up (also primes the client's output-schema cache)
        listing = await session.list_tools()
        out["tools_listed"] = len(listing.tools)
        names = {t.name for t in listing.tools}
        if args.tool not in names:
            # a proxy may namespace the upstream's tools (mcp-guard: "<upstream>_echo")
            prefixed = sorted(n for n in names if n.endswith("_" + args.tool))
            if len(prefixed) != 1:
                raise SystemExit(f"tool {args.tool!r} not offered by server (got {len(names)} tools)")
            args.tool = prefixed[0]
        out["tool"] = args.tool
        out["list_bytes"] = len(listing.model_dump_json(by_alias=True, exclude_none=True))
        for i in range(args.warmup):
            await session.call_tool(args.tool, {"text": f"warm{i}"})

        # (a) tools/list
        lat: list[float] = []
        for _ in range(args.list_n):
            t0 = time.perf_counter_ns()
            await session.list_tools()
            lat.append(time.perf_counter_ns() - t0)
        lat.sort()
        out["list_p50_ms"] = ms(statistics.median(lat))
        out["list_min_ms"] = ms(lat[0])

        # (b) sequential echo
        lat = []
        cpu = CpuWindow()
        t_all = time.perf_counter_ns()
        for i in range(args.seq_n):
            text = f"hello-{i}"
            t0 = time.perf_counter_ns()
            res = await session.call_tool(args.tool, {"text": text})
            lat.append(time.perf_counter_ns() - t0)
            if i % 97 == 0 and args.tool.endswith("echo"):
                got = res.content[0].text if res.content else None  # type: ignore[union-attr]
                if got != text or res.is_error:
                    raise SystemExit(f"bad echo reply: {res!r}")
        seq_wall = time.perf_counter_ns() - t_all
        await anyio.sleep(args.settle)  # background work the calls caused (span export) counts too
        srv_us, top_us, cli_us = cpu.per_call_us(args.seq_n)
        lat.sort()
        out["seq_p50_ms"] = ms(pct(lat, 50))
        out["seq_p99_ms"] = ms(pct(lat, 99))
        out["seq_mean_ms"] = ms(statistics.fmean(lat))
        out["seq_rps"] = round(args.seq_n / (seq_wall / 1e9), 1)
        out["seq_server_cpu_us"] = srv_us
        out["seq_top_cpu_us"] = top_us
        out["seq_client_cpu_us"] = cli_us

        # (c) concurrent throughput
        lat = []
        issued = 0
        errors = 0

        async def worker() -> None:
            nonlocal issued, errors
            while issued < args.conc_n:
                issued += 1
                t0 = time.perf_counter_ns()
                res = await session.call_tool(args.tool, {"text": "c"})
                lat.append(time.perf_counter_ns() - t0)
                if res.is_error:
                    errors += 1

        cpu = CpuWindow()
        t0 = time.perf_counter_ns()
        async with anyio.create_task_group() as tg:
            for _ in range(args.conc):
                tg.start_soon(worker)
        wall = time.perf_counter_ns() - t0
        await anyio.sleep(args.settle)
        srv_us, top_us, cli_us = cpu.per_call_us(len(lat))
        lat.sort()
        out["conc"] = args.conc
        out["conc_rps"] = round(len(lat) / (wall / 1e9), 1)
        out["conc_p50_ms"] = ms(pct(lat, 50))
        out["conc_p99_ms"] = ms(pct(lat, 99))
        out["conc_server_cpu_us"] = srv_us
        out["conc_top_cpu_us"] = top_us
        out["conc_client_cpu_us"] = cli_us
        out["conc_errors"] = errors
    if exporter is not None:
        out["client_spans"] = len(exporter.get_finished_spans())
    return out


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: drive.py [options] -- SERVER_CMD [ARGS...]")
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1 :]
    if not cmd:
        sys.exit("drive.py: empty server command after --")
    ap = argparse.ArgumentParser(prog="drive.py")
    ap.add_argument("--label", default="")
    ap.add_argument("--tool", default="echo", help="tool to call with {'text': ...}")
    ap.add_argument("--mode", choices=["legacy", "modern", "auto"], default="legacy",
                    help="legacy=initialize handshake (default), modern=server/discover (2026-07-28)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--list-n", type=int, default=50)
    ap.add_argument("--seq-n", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--conc-n", type=int, default=3000)
    ap.add_argument("--otel-memory", action="store_true",
                    help="install an OTel SDK tracer provider with an in-memory exporter in this client")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds to wait after a phase before reading CPU, so a proxy's export thread "
                         "ships what the calls produced (latency and throughput are measured before)")
    ap.add_argument("--server-stderr", default=None, help="file to append the server's stderr to")
    args = ap.parse_args(opts)
    result = anyio.run(run, args, cmd)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
