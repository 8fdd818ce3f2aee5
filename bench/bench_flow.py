"""Information-flow cost on the hot path.

Measures:
  * ``carries`` on a 4 KiB argument (prose that shares no run with the content, and one hidden in
    base64) against ``--mib`` MiB (default 16) of labelled content: the per-call comparison;
  * label bookkeeping plus a ``session.labels`` condition: the flow step's read (``run``: the
    cached state), its view, and a decision with a ``session.labels`` rule, minus the same
    decision without flow policies;
  * building the index for the content (paid once, incrementally, as content arrives).

Run: .venv/bin/python bench/bench_flow.py [--mib 16] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import random
import statistics
import string
import time
from collections.abc import Callable
from typing import Any

from mcp_guard.flow import ContentIndex
from mcp_guard.identity import Principal
from mcp_guard.policy import load_sources
from mcp_guard.proxy.flow import FlowTracker
from mcp_guard.state.base import FlowPiece, LabelOrigin
from mcp_guard.state.memory import MemoryStore

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


def per_call(fn: Callable[[], Any], n: int, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds of ``n`` calls."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=float, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    rng = random.Random(7)
    words = _words(rng, 20_000)
    other = _words(random.Random(8), 20_000)
    index = ContentIndex()
    piece = 256 * 1024
    t = time.perf_counter()
    for _ in range(max(1, int(opts.mib * 1024 * 1024 / piece))):
        index.add({"untrusted"}, _text(rng, words, piece))
    build = time.perf_counter() - t
    prose = _text(random.Random(9), other, 4096)
    secret = base64.b64encode(_text(random.Random(10), other, 3000).encode()).decode()[:4096]
    carries_prose = per_call(lambda: index.carries([prose], ["untrusted"]), 50, opts.rounds)
    carries_b64 = per_call(lambda: index.carries([secret], ["untrusted"]), 50, opts.rounds)

    async def flow_step() -> tuple[float, float]:
        tracker = FlowTracker(MemoryStore(), 16 << 20, exclusive=True)
        await tracker.add("session:s", [LabelOrigin("untrusted", "web/fetch", 1)], [FlowPiece(frozenset({"untrusted"}), "some page")])
        flow_ps, plain_ps = load_sources([("f.yaml", FLOW_POLICY)]), load_sources([("p.yaml", PLAIN_POLICY)])
        who = Principal("alice", ("bot",))
        loop_n = 2000

        async def with_flow() -> None:
            for _ in range(loop_n):
                state = await tracker.get("session:s")
                view = tracker.view("session:s", state, None)
                flow_ps.decide(who, "mail/send_mail", {"to": "bob"}, flow=view)

        async def without() -> None:
            for _ in range(loop_n):
                plain_ps.decide(who, "mail/send_mail", {"to": "bob"})

        a, b = [], []
        for _ in range(opts.rounds):
            t0 = time.perf_counter()
            await with_flow()
            a.append((time.perf_counter() - t0) / loop_n)
            t0 = time.perf_counter()
            await without()
            b.append((time.perf_counter() - t0) / loop_n)
        return statistics.median(a), statistics.median(b)

    flow_call, plain_call = asyncio.run(flow_step())
    result = {
        "python": platform.python_version(),
        "content_mib": round(index.chars / 2**20, 2),
        "index_build_s": round(build, 2),
        "carries_4kib_prose_us": round(carries_prose * 1e6, 1),
        "carries_4kib_base64_us": round(carries_b64 * 1e6, 1),
        "flow_step_and_session_labels_us": round((flow_call - plain_call) * 1e6, 2),
        "decision_without_flow_us": round(plain_call * 1e6, 2),
    }
    if opts.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40} {v}")


if __name__ == "__main__":
    main()
