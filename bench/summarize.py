"""Summarize drive.py (or, with ``--serve``, serve_bench.py) JSON lines: medians across rounds,
ratios vs. the baseline.

Usage: python summarize.py results.jsonl [--baseline direct] [--markdown] [--serve]

Ratios are target/baseline for every column, so >1 means slower for latency
and CPU columns and <1 means slower for the throughput column (rps).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

COLS = [
    # (json key, header, decimals)
    ("init_ms", "init ms", 0),
    ("list_p50_ms", "list p50 ms", 2),
    ("seq_p50_ms", "seq p50 ms", 3),
    ("seq_p99_ms", "seq p99 ms", 3),
    ("conc_rps", "conc16 rps", 0),
    ("conc_p99_ms", "conc p99 ms", 1),
    ("seq_server_cpu_us", "srv CPU us/call", 0),
    ("seq_top_cpu_us", "proxy-proc CPU us/call", 0),
    ("conc_top_cpu_us", "proxy-proc CPU us/call at 16", 0),
    ("conc_errors", "errors", 0),
]
RATIO_COLS = [  # (json key, header)
    ("list_p50_ms", "x list"),
    ("seq_p50_ms", "x seq50"),
    ("seq_p99_ms", "x seq99"),
    ("conc_rps", "x rps"),
    ("seq_server_cpu_us", "x cpu"),
]


SERVE_COLS = [  # serve_bench.py: (json key, header, decimals)
    ("rps", "req/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 1),
    ("errors", "errors", 0),
    ("proxy_cpu_us", "proxy CPU us/req", 0),
    ("upstream_cpu_us", "upstream CPU us/req", 0),
    ("per_cpu_s", "req per server CPU-s", 0),
    ("proxy_cpu_util", "proxy cores busy", 2),
]
SERVE_RATIO_COLS = [("rps", "x rps"), ("p99_ms", "x p99"), ("proxy_cpu_us", "x cpu"), ("per_cpu_s", "x per CPU-s")]


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table(hdr: list[str], rows: list[list[str]], markdown: bool) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows, strict=False)]
    if markdown:
        print("| " + " | ".join(h.ljust(w) for h, w in zip(hdr, widths, strict=False)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)) + " |")
    else:
        print("  ".join(h.rjust(w) for h, w in zip(hdr, widths, strict=False)))
        for row in rows:
            print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=False)))


def serve(path: str, baseline: str, markdown: bool) -> None:
    """One table per (era, connections): medians over rounds, ratios to the baseline target."""
    groups: dict[tuple[str, int], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    with open(path) as f:
        for line in f:
            r = json.loads(line) if line.startswith("{") else {}
            if "label" not in r:
                continue
            if r.get("proxy_cpu_us"):  # requests per CPU-second of proxy + upstream: capacity, not luck
                r["per_cpu_s"] = 1e6 / (r["proxy_cpu_us"] + (r.get("upstream_cpu_us") or 0))
            groups[(r["era"], r["conns"])][r["label"]].append(r)
            if r["label"] not in order:
                order.append(r["label"])
    for era, conns in sorted(groups):
        by = groups[(era, conns)]
        base = by.get(baseline)
        print(f"\n#### {era}, {conns} connections; medians of " + ", ".join(f"{t}={len(by[t])}" for t in order if t in by)
              + " runs")
        hdr = ["target"] + [h for _, h, _ in SERVE_COLS] + [h for _, h in SERVE_RATIO_COLS]
        rows = []
        for t in order:
            if t not in by:
                continue
            row = [t]
            for key, _, dec in SERVE_COLS:
                v = med(by[t], key)
                row.append("-" if v is None else f"{v:.{dec}f}")
            for key, _ in SERVE_RATIO_COLS:
                v, b = med(by[t], key), (med(base, key) if base else None)
                row.append("-" if (v is None or not b) else f"{v / b:.2f}")
            rows.append(row)
        table(hdr, rows, markdown)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--baseline", default="direct")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--serve", action="store_true", help="the input is serve_bench.py output")
    args = ap.parse_args()
    if args.serve:
        serve(args.jsonl, args.baseline, args.markdown)
        return

    groups: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    with open(args.jsonl) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            n = r.get("tools_listed", 0) - 1  # minus echo
            groups[n][r["label"]].append(r)
            if r["label"] not in order:
                order.append(r["label"])

    for n in sorted(groups):
        by = groups[n]
        base = by.get(args.baseline)
        print(f"\n### {n} dummy tools (+echo); medians over rounds; rounds per target: "
              + ", ".join(f"{t}={len(by[t])}" for t in order if t in by))
        hdr = ["target"] + [h for _, h, _ in COLS] + [h for _, h in RATIO_COLS]
        rows = []
        for t in order:
            if t not in by:
                continue
            row = [t]
            for key, _, dec in COLS:
                v = med(by[t], key)
                row.append("-" if v is None else f"{v:.{dec}f}")
            for key, _ in RATIO_COLS:
                v, b = med(by[t], key), (med(base, key) if base else None)
                row.append("-" if (v is None or not b) else f"{v / b:.2f}")
            rows.append(row)
        table(hdr, rows, args.markdown)
        # noise: spread of seq p50 across rounds
        spread = []
        for t in order:
            if t in by and len(by[t]) > 1:
                v = [r["seq_p50_ms"] for r in by[t]]
                spread.append(f"{t} {min(v):.3f}-{max(v):.3f}")
        if spread:
            print("seq p50 range across rounds (ms): " + "; ".join(spread))


if __name__ == "__main__":
    main()
