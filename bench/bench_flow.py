"""Information-flow cost on the hot path, against its two targets.

Measures:
  * ``carries`` on a 4 KiB argument against ``--mib`` MiB (default 16) of labelled content: prose
    that shares no run with the content, the same hidden in base64 (the two targeted figures),
    and for information hex, percent-encoded, a 4 KiB object of short strings, and one short
    string (the whole-string path).  Every call gets an argument it has not seen (the per-value
    cache of forms and fingerprints would otherwise answer), so these are first-sight costs;
  * label bookkeeping plus a ``session.labels`` condition: the flow step's read (``run``: the
    cached state), its view, and ``evaluate`` (what the pipeline calls: the decision and what the
    request brings) with a ``session.labels`` rule, minus ``evaluate`` without flow policies;
  * building the index for the content (paid once, incrementally, as content arrives).

Each figure is CPU time of this thread (``time.thread_time_ns``), the minimum over ``--rounds``
rounds of many calls: the machine may be shared, and the minimum is the figure load moves least.
The load average is printed beside it.

Run: .venv/bin/python bench/bench_flow.py [--mib 16] [--rounds 15] [--json] [--compare DIR | --processes N]

``--compare DIR`` measures the ``carries`` cases of this tree and of the source tree ``DIR`` (an
older checkout) side by side: one worker process per tree, each with its own index, their rounds
interleaved (A B B A ...) so the machine's load falls on both alike; it prints both figures and
their ratio, the figure to trust on a shared machine.

``--processes N`` measures the two targeted cases in ``N`` fresh processes, one after another, each
beside a pure-Python reference loop timed in the same rounds.  This machine (a virtual one) runs
whole stretches of seconds about 40 % slower, the reference loop as much as ``carries``: the
reference loop tells which stretch a process was measured in, and the ratio to it stays put.
Each process then adds one URL to its content and measures base64 again (``base64_url``): content
that holds a space-free stretch of 24+ characters, as most fetched pages do, is searched in full.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import string
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from mcp_guard.decision import evaluate
from mcp_guard.flow import ContentIndex
from mcp_guard.identity import Principal
from mcp_guard.policy import load_sources
from mcp_guard.proxy.flow import FlowTracker
from mcp_guard.state.base import FlowPiece, LabelOrigin
from mcp_guard.state.memory import MemoryStore

CARRIES_TARGET_US = 200.0
FLOW_STEP_TARGET_US = 10.0

FLOW_POLICY = """version: 1
labels:
  - tools: ["web/*"]
    brings: [untrusted]
policies:
  - id: p
    rules:
      - effect: allow
        tools: ["*/*"]
      - effect: approve
        tools: ["mail/send_*"]
        when: {session.labels: {any_of: [private]}}
"""
PLAIN_POLICY = """version: 1
policies:
  - id: p
    rules:
      - effect: allow
        tools: ["*/*"]
"""


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 10))) for _ in range(n)]


def _text(rng: random.Random, words: list[str], size: int) -> str:
    out, total = [], 0
    while total < size:
        w = rng.choice(words)
        if rng.random() < 0.1:
            w = w.capitalize() + rng.choice(".,;")
        out.append(w)
        total += len(w) + 1
    return " ".join(out)[:size]


def least_cpu(fn: Callable[[Any], Any], inputs: Sequence[Sequence[Any]]) -> float:
    """The least CPU seconds per call over the rounds; round ``r`` calls ``fn`` on each of ``inputs[r]``."""
    best = float("inf")
    for batch in inputs:
        t = time.thread_time_ns()
        for x in batch:
            fn(x)
        best = min(best, (time.thread_time_ns() - t) / len(batch))
    return best / 1e9


def fresh(make: Callable[[int], Any], rounds: int, n: int) -> list[list[Any]]:
    """``rounds`` batches of ``n`` inputs, all different (first sight for every call)."""
    return [[make(r * n + i) for i in range(n)] for r in range(rounds)]


PER_CALL = 40


def carries_cases(mib: float) -> tuple[ContentIndex, dict[str, Callable[[int], Any]], float]:
    """The index over ``mib`` MiB of generated prose, the argument makers by case, and the build's CPU seconds."""
    rng = random.Random(7)
    words = _words(rng, 20_000)
    other = _words(random.Random(8), 20_000)
    index = ContentIndex()
    piece = 256 * 1024
    t = time.thread_time()
    for _ in range(max(1, int(mib * 1024 * 1024 / piece))):
        index.add({"untrusted"}, _text(rng, words, piece))
    build = time.thread_time() - t
    prose = _text(random.Random(9), other, 4096)
    plain = _text(random.Random(10), other, 3000)

    def stamp(i: int) -> str:
        return f"{i:06d} "

    cases: dict[str, Callable[[int], Any]] = {
        "prose": lambda i: [(stamp(i) + prose)[:4096]],
        "base64": lambda i: [base64.b64encode((stamp(i) + plain).encode()).decode()[:4096]],
        "hex": lambda i: [(stamp(i) + plain[:2040]).encode().hex()[:4096]],
        "percent": lambda i: [quote(stamp(i) + prose[:1400], safe="")[:4096]],
        "object": lambda i: [f"{stamp(i)}{w} {j}" for j, w in enumerate(other[:300])],  # ~4 KiB of short strings
        "short": lambda i: [f"carol{i}@corp.example"],
    }
    return index, cases, build


def carries_figures(mib: float, rounds: int) -> tuple[dict[str, float], float, float]:
    index, cases, build = carries_cases(mib)
    out = {name: least_cpu(lambda a: index.carries(a, ["untrusted"]), fresh(make, rounds, PER_CALL))
           for name, make in cases.items()}
    return out, build, index.chars / 2**20


def worker(mib: float) -> None:
    """``--compare``'s side: for each line ``case round`` read, the CPU ns per call of that round."""
    index, cases, _build = carries_cases(mib)
    print("ready", flush=True)
    for line in sys.stdin:
        name, r = line.split()
        batch = [cases[name](int(r) * PER_CALL + i) for i in range(PER_CALL)]  # as ``fresh`` makes round r
        t = time.thread_time_ns()
        for x in batch:
            index.carries(x, ["untrusted"])
        print((time.thread_time_ns() - t) / len(batch), flush=True)


def compare(base: str, mib: float, rounds: int) -> None:
    """This tree against ``base``, interleaved round by round, the least of each."""
    trees = {"this": os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "base": os.path.abspath(base)}
    procs = {name: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--mib", str(mib)],
                                    env={**os.environ, "PYTHONPATH": tree}, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
             for name, tree in trees.items()}
    for proc in procs.values():
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    print(f"load average {os.getloadavg()[0]:.1f}; CPU µs per call, least of {rounds} rounds")
    for case in ("prose", "base64", "hex", "percent", "object", "short"):
        best = {name: float("inf") for name in procs}
        for r in range(rounds):
            for name in (("this", "base") if r % 2 else ("base", "this")):
                proc = procs[name]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"{case} {r}\n")
                proc.stdin.flush()
                best[name] = min(best[name], float(proc.stdout.readline()) / 1e3)
        print(f"  {case:8} this {best['this']:9.1f}   base {best['base']:9.1f}   ratio {best['this'] / best['base']:.3f}")
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    print(f"load average {os.getloadavg()[0]:.1f}")


def reference_loop(_: Any = None) -> int:
    """Pure Python with no index and no numpy: how fast this process's CPU runs just now."""
    total = 0
    for i in range(2000):
        total += i * i
    return total


URL_PIECE = "see https://example.com/reports/2026/q3/summary?id=8f3a9c2e7b1d4f60a5 for details"
"""Labelled content with one space-free stretch of 24+ characters (a URL, an id, an encoded blob),
as most fetched pages hold: a space-free argument form is then searched in full."""


def one_process(mib: float, rounds: int) -> None:
    """``--processes``' side: the two targeted cases and the reference loop, their rounds
    interleaved, the least of each as one JSON line; then base64 again once the content also holds
    a URL (``base64_url``)."""
    index, cases, _build = carries_cases(mib)
    batches = {name: fresh(cases[name], rounds, PER_CALL) for name in ("base64", "prose")}
    best = {"base64": float("inf"), "prose": float("inf"), "reference": float("inf"), "base64_url": float("inf")}

    def carries(a: Any) -> None:
        index.carries(a, ["untrusted"])

    for r in range(rounds):
        for name, fn, batch in (("reference", reference_loop, [None] * PER_CALL),
                                ("base64", carries, batches["base64"][r]), ("prose", carries, batches["prose"][r])):
            best[name] = min(best[name], least_cpu(fn, [batch]))
    index.add({"untrusted"}, URL_PIECE)
    again = fresh(lambda i: cases["base64"](rounds * PER_CALL + i), rounds, PER_CALL)
    for r in range(rounds):
        best["reference"] = min(best["reference"], least_cpu(reference_loop, [[None] * PER_CALL]))
        best["base64_url"] = min(best["base64_url"], least_cpu(carries, [again[r]]))
    print(json.dumps({k: round(v * 1e6, 1) for k, v in best.items()}), flush=True)


def processes(n: int, mib: float, rounds: int) -> None:
    """``n`` fresh processes one after another: each one's figures, then the spread."""
    print(f"load average {os.getloadavg()[0]:.1f}; CPU µs per call, least of {rounds} rounds, one process per line")
    got = []
    for _ in range(n):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one-process", "--mib", str(mib),
                              "--rounds", str(rounds)], capture_output=True, text=True, check=True).stdout
        got.append(json.loads(out))
        row = got[-1]
        print(f"  base64 {row['base64']:7.1f}   prose {row['prose']:7.1f}   base64, content with a URL {row['base64_url']:7.1f}"
              f"   reference loop {row['reference']:7.1f}"
              f"   base64 / reference {row['base64'] / row['reference']:.2f}", flush=True)
    for name in ("base64", "prose", "base64_url", "reference"):
        values = sorted(row[name] for row in got)
        print(f"{name:10} least {values[0]:7.1f}   median {values[len(values) // 2]:7.1f}   most {values[-1]:7.1f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


def flow_step_figures(rounds: int) -> tuple[float, float]:
    async def run() -> tuple[float, float]:
        tracker = FlowTracker(MemoryStore(), 16 << 20, exclusive=True)
        await tracker.add("session:s", [LabelOrigin("untrusted", "web/fetch", 1)],
                          [FlowPiece(frozenset({"untrusted"}), "some page")])
        flow_ps, plain_ps = load_sources([("f.yaml", FLOW_POLICY)]), load_sources([("p.yaml", PLAIN_POLICY)])
        who = Principal("alice", ("bot",))
        args = {"to": "bob"}
        n = 2000
        with_flow, without = float("inf"), float("inf")
        for _ in range(rounds):
            t = time.thread_time_ns()
            for _ in range(n):
                state = await tracker.get("session:s")
                view = tracker.view("session:s", state, None)
                evaluate(flow_ps, None, who, "mail/send_mail", args, None, 0.0, flow=view)
            with_flow = min(with_flow, (time.thread_time_ns() - t) / n)
            t = time.thread_time_ns()
            for _ in range(n):
                evaluate(plain_ps, None, who, "mail/send_mail", args, None, 0.0)
            without = min(without, (time.thread_time_ns() - t) / n)
        return with_flow / 1e9, without / 1e9

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=float, default=16)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare", metavar="DIR", help="another source tree to measure beside this one, interleaved")
    ap.add_argument("--processes", type=int, metavar="N", help="the targeted cases in N fresh processes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one-process", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.worker:
        worker(opts.mib)
        return
    if opts.one_process:
        one_process(opts.mib, opts.rounds)
        return
    if opts.processes:
        processes(opts.processes, opts.mib, opts.rounds)
        return
    if opts.compare:
        compare(opts.compare, opts.mib, opts.rounds)
        return
    load_before = os.getloadavg()[0]
    carries, build, mib = carries_figures(opts.mib, opts.rounds)
    flow_call, plain_call = flow_step_figures(opts.rounds)
    step = (flow_call - plain_call) * 1e6
    worst = max(carries["prose"], carries["base64"]) * 1e6
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "content_mib": round(mib, 2),
        "index_build_cpu_s": round(build, 2),
        **{f"carries_4kib_{k}_us" if k not in ("short",) else "carries_short_string_us": round(v * 1e6, 1)
           for k, v in carries.items()},
        "flow_step_and_session_labels_us": round(step, 2),
        "evaluate_without_flow_us": round(plain_call * 1e6, 2),
        "targets": {
            "carries, 4 KiB against 16 MiB (worse of prose and base64)": [round(worst, 1), CARRIES_TARGET_US],
            "flow step and session.labels per call": [round(step, 2), FLOW_STEP_TARGET_US],
        },
    }
    if opts.json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        if k != "targets":
            print(f"{k:40} {v}")
    print("\ntargets (CPU µs per call, least of the rounds):")
    for name, (got, target) in result["targets"].items():
        print(f"  {name:60} {got:>8} µs   target ≤ {target:g} µs   {'met' if got <= target else 'NOT met'}")


if __name__ == "__main__":
    main()
