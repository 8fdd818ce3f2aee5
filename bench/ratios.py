"""The everything-on ratios in one command: the guard against the bare hop and the direct upstream.

  PYTHONPATH=. .venv/bin/python bench/ratios.py [--rounds 3] [--out DIR] [--skip instructions,stdio,serve]

It runs what the other bench scripts already do, in turn, and writes ``DIR/ratios.jsonl`` (one
line per measured ratio, with its raw figures) and ``DIR/ratios.md`` (the table):

1. instructions per call, ``guard_full`` / the bare line forwarder (``count_instructions.py``,
   valgrind: independent of the machine's load);
2. ``run.sh`` with ``TARGETS="direct passthrough guard_full"`` (interleaved per round): the guard's
   CPU per call / the bare hop's, sequential p50 / direct, calls per second at 16 in flight / direct
   (medians over rounds);
3. ``serve_bench.py --targets direct,guard_full --conns 64,256 --eras modern,legacy`` (interleaved):
   req/s / direct, per era and connection count (medians over rounds; needs ``wrk``).

Only the instruction ratio means anything on a loaded machine; run the rest on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from count_instructions import count
from full_config import write as write_config
from otlp_sink import otlp_sink

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ECHO = [sys.executable, str(HERE / "echo_server.py")]
GOALS = {  # ratio -> (comparison, goal)
    "instructions": ("<=", 3.0),
    "cpu_seq": ("<=", 1.9),
    "cpu_conc": ("<=", 1.9),
    "seq_p50": ("<=", 1.25),
    "conc_rps": (">=", 0.85),
    "serve_rps": (">=", 0.9),
}


def instructions(out: Path, calls: int) -> list[dict[str, Any]]:
    with otlp_sink() as endpoint:
        config = write_config(out / "full", endpoint, sys.executable)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        hop = count([sys.executable, str(HERE / "passthrough_proxy.py"), "--", *ECHO], calls=calls, out=out / "callgrind")
        guard = count([sys.executable, "-m", "mcp_guard", "run", "--config", str(config)], calls=calls,
                      out=out / "callgrind", env=env)
    a, b = int(guard["instructions_per_call"]), int(hop["instructions_per_call"])  # type: ignore[call-overload]
    return [{"ratio": "instructions", "what": "instructions per call, guard / bare hop", "guard": a, "other": b,
             "value": round(a / b, 2)}]


def _median(rows: list[dict[str, Any]], label: str, field: str) -> float:
    values = [float(r[field]) for r in rows if r.get("label") == label and r.get(field) is not None]
    if not values:
        raise SystemExit(f"ratios.py: no {field} for {label} in the results")
    return statistics.median(values)


def stdio(out: Path, rounds: int) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TARGETS": "direct passthrough guard_full", "TOOLS": "20",
           "ROUNDS": str(rounds), "OUTDIR": str(out / "stdio"), "PY": sys.executable}
    subprocess.run(["bash", str(HERE / "run.sh")], env=env, check=True)
    rows = [json.loads(line) for line in (out / "stdio" / "results.jsonl").read_text().splitlines() if line.strip()]

    def ratio(name: str, what: str, field: str, label: str, other: str) -> dict[str, Any]:
        a, b = _median(rows, label, field), _median(rows, other, field)
        return {"ratio": name, "what": what, "guard": a, "other": b, "value": round(a / b, 2)}

    return [
        ratio("cpu_seq", "guard CPU per call / bare hop's (sequential)", "seq_top_cpu_us", "guard_full", "passthrough"),
        ratio("cpu_conc", "guard CPU per call / bare hop's (16 in flight)", "conc_top_cpu_us", "guard_full", "passthrough"),
        ratio("seq_p50", "sequential p50 / direct", "seq_p50_ms", "guard_full", "direct"),
        ratio("conc_rps", "calls/s at 16 in flight / direct", "conc_rps", "guard_full", "direct"),
    ]


def serve(out: Path, rounds: int) -> list[dict[str, Any]]:
    subprocess.run([sys.executable, str(HERE / "serve_bench.py"), "--targets", "direct,guard_full", "--conns", "64,256",
                    "--eras", "modern,legacy", "--rounds", str(rounds), "--out", str(out / "serve")],
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    rows = [json.loads(line) for line in (out / "serve" / "results.jsonl").read_text().splitlines() if line.strip()]
    found = []
    for era in ("legacy", "modern"):
        for conns in (64, 256):
            cell = [r for r in rows if r.get("era") == era and r.get("conns") == conns]
            a, b = _median(cell, "guard_full", "rps"), _median(cell, "direct", "rps")
            found.append({"ratio": "serve_rps", "what": f"serve req/s / direct, {era} era, {conns} connections",
                          "guard": a, "other": b, "value": round(a / b, 2), "era": era, "conns": conns})
    return found


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Everything on, {meta['time']}, {meta['cores']} cores, load {meta['load'][0]:.1f} at the start, "
             f"{meta['load_end'][0]:.1f} at the end, {meta['rounds']} rounds, head {meta['head']}", "",
             "| ratio | guard | compared with | ratio | goal | met |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        op, goal = GOALS[r["ratio"]]
        met = r["value"] <= goal if op == "<=" else r["value"] >= goal
        lines.append(f"| {r['what']} | {_figure(r['guard'])} | {_figure(r['other'])} | **{r['value']:.2f}×** | {op} {goal} | "
                     f"{'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=300, help="calls counted under valgrind")
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"ratios-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--skip", default="", help="comma-separated: instructions, stdio, serve")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if unknown := skip - {"instructions", "stdio", "serve"}:
        sys.exit(f"ratios.py: unknown --skip {sorted(unknown)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                            "load": os.getloadavg(), "rounds": args.rounds, "head": head}
    rows: list[dict[str, Any]] = []
    if "instructions" not in skip:
        rows += instructions(out, args.calls)
    if "stdio" not in skip:
        rows += stdio(out, args.rounds)
    if "serve" not in skip:
        rows += serve(out, args.rounds)
    meta["load_end"] = os.getloadavg()
    with (out / "ratios.jsonl").open("w") as f:
        f.write(json.dumps({"meta": True, **meta}) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    text = table(rows, meta)
    (out / "ratios.md").write_text(text)
    print(text)
    print(f"raw: {out / 'ratios.jsonl'}", file=sys.stderr)


if __name__ == "__main__":
    main()
