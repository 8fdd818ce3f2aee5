"""CPU the guard spends per tool call on tracing (OTLP exporter on) and the audit log.

Runs the real ``mcp-guard run`` in front of ``bench/echo_server.py`` and drives sequential
``tools/call echo`` requests over raw JSON-RPC, reading the guard process's own CPU time
(user + system, all its threads, so the span export thread is included) from /proc before and after
the calls.  Variants, interleaved round by round:

  off      no telemetry, no audit (the baseline)
  trace    OTLP/HTTP traces + metrics to a live sink (this process runs a dummy OTLP HTTP sink
           answering 200, or pass --endpoint to use e.g. a running Phoenix)
  audit    hash-chained audit log (fsync off, the default)
  both     trace + audit: the issue's bar is <= 100 µs CPU per call over ``off``

A variant named ``NAME@base`` (e.g. ``both@base``) runs the same guard code from ``--baseline-src DIR``
(a copy of another revision's ``mcp_guard/`` package, e.g. ``git archive REV mcp_guard | tar -x -C DIR``),
interleaved with this tree's, so a change is measured before and after in one run.

Run: .venv/bin/python bench/bench_telemetry.py [--calls 2000] [--rounds 5] [--endpoint URL] [--json]
     [--baseline-src DIR --variants off,both,off@base,both@base]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from line_rpc import line_rpc
from otlp_sink import RECEIVED, otlp_sink

HERE = Path(__file__).resolve().parent
ECHO = HERE / "echo_server.py"
GUARD = Path(sys.executable).parent / "mcp-guard"
TICKS = os.sysconf("SC_CLK_TCK")
VARIANTS = ("off", "trace", "audit", "both")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def write_config(directory: Path, audit: bool) -> Path:
    policies = directory / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "allow.yaml").write_text(yaml.safe_dump({
        "version": 1,
        "policies": [{"id": "bench", "rules": [{"id": "echo", "effect": "allow", "tools": ["echo/echo"]}]}],
    }))
    doc: dict[str, Any] = {
        "version": 1,
        "upstreams": {"echo": {"command": sys.executable, "args": [str(ECHO), "--tools", "0"]}},
        "policies": "./policies",
        "identity": {"user": "alice@example.com", "agent": "bench-agent", "purpose": "benchmark"},
        "state": {"url": "memory://"},
    }
    if audit:
        doc["audit"] = {"path": str(directory / "audit.jsonl")}
    path = directory / "guard.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_variant(variant: str, calls: int, endpoint: str, work: Path, extra: dict[str, str] | None = None,
                baseline_src: str | None = None) -> float:
    """CPU µs per call of the guard process for one variant (after start-up and a warm-up)."""
    directory = work / f"{variant.replace('@', '-')}-{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    variant, _, base = variant.partition("@")
    if base:
        assert baseline_src is not None
        env["PYTHONPATH"] = baseline_src  # ahead of the editable install: the baseline's mcp_guard
    config = write_config(directory, audit=variant in ("audit", "both"))
    if variant in ("trace", "both"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_SERVICE_NAME"] = "mcp-guard-bench"
        env.update(extra or {})
    proc = subprocess.Popen([str(GUARD), "run", "--config", str(config)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=directory)
    assert proc.stdin is not None and proc.stdout is not None
    rpc = line_rpc(proc)

    def call(i: int) -> None:
        params = {"name": "echo_echo", "arguments": {"text": f"hello {i}"},
                  "_meta": {"traceparent": f"00-{i:032x}-{i:016x}-01"}}
        answer = rpc("tools/call", params)
        if answer.get("result", {}).get("isError") is not False:
            raise SystemExit(f"{variant}: the call failed: {answer}")

    try:
        rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        for i in range(200):  # warm-up: imports, caches, first export
            call(i)
        before = cpu_seconds(proc.pid)
        for i in range(calls):
            call(i + 1000)
        time.sleep(1.5)  # let the export thread ship what the calls produced (its CPU counts too)
        after = cpu_seconds(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(30)
    return (after - before) / calls * 1e6


def _off(variant: str, med: dict[str, float]) -> str:
    """The baseline a variant's added cost is counted from: ``off`` of the same code."""
    return "off@base" if variant.endswith("@base") and "off@base" in med else "off"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--endpoint", help="OTLP/HTTP base URL (default: a dummy sink in this process)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--otel", action="append", default=[], metavar="VAR=VALUE",
                    help="extra OTEL_* setting for the traced variants, e.g. OTEL_METRICS_EXPORTER=none")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
                    + " (each may end in @base)")
    ap.add_argument("--baseline-src", help="directory holding the baseline's mcp_guard/ package, for the @base variants")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if "off" not in variants or any(v.partition("@")[0] not in VARIANTS for v in variants):
        ap.error(f"--variants must include off and name only {', '.join(VARIANTS)} (each may end in @base)")
    if any("@" in v for v in variants) and not args.baseline_src:
        ap.error("the @base variants need --baseline-src")
    extra = dict(kv.split("=", 1) for kv in args.otel)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint or stack.enter_context(otlp_sink())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-telemetry-")))
        for _ in range(args.rounds):
            for variant in variants:
                samples[variant].append(run_variant(variant, args.calls, endpoint, work, extra, args.baseline_src))
    med = {v: statistics.median(s) for v, s in samples.items()}
    result = {
        "calls": args.calls,
        "rounds": args.rounds,
        "endpoint": args.endpoint or "dummy OTLP sink",
        "exports_received": dict(RECEIVED),
        "cpu_us_per_call": {v: round(m, 1) for v, m in med.items()},
        "added_us_per_call": {v: round(med[v] - med[_off(v, med)], 1) for v in variants if v != _off(v, med)},
        "otel": extra,
        "samples": {v: [round(x, 1) for x in s] for v, s in samples.items()},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"guard CPU per call, median of {args.rounds} rounds x {args.calls} calls ({result['endpoint']}):")
    for v in variants:
        added = "" if v == _off(v, med) else f"  (+{med[v] - med[_off(v, med)]:.1f} µs over {_off(v, med)})"
        print(f"  {v:<10} {med[v]:8.1f} µs{added}   samples {samples[v]}")
    print(f"OTLP exports received by the sink: {dict(RECEIVED)}")


if __name__ == "__main__":
    main()
