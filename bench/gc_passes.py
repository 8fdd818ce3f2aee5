"""The cyclic garbage collector's passes in a running guard, everything on, and its memory over many calls.

  python gc_passes.py [--calls 20000] [--warmup 500] [--every 2000] [--base DIR]

starts ``mcp-guard run`` with the everything-on configuration (``full_config.py``, an OTLP sink of
its own) inside a small wrapper that counts the collector's passes per generation and the objects
each found unreachable (``gc.callbacks``), makes ``--warmup`` calls, then ``--calls`` sequential
``tools/call echo`` calls, sampling the guard's resident memory (``VmRSS``) every ``--every``
calls, and prints one JSON line: passes and unreachable objects per generation over the counted
calls, and the RSS samples in KiB.  Unreachable objects are garbage only the cyclic collector
frees (reference cycles); none means every record of a call is freed as soon as it is let go.
``--base DIR`` runs the guard from the source tree ``DIR`` as well (``PYTHONPATH=DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from full_config import write as write_config
from line_rpc import line_rpc
from otlp_sink import otlp_sink

HERE = Path(__file__).resolve().parent


def inner(report: str, argv: list[str]) -> None:
    """The guard, with the collector's passes counted from SIGUSR1 and written to ``report`` on SIGUSR2."""
    import gc

    passes: Counter[str] = Counter()

    def counted(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            passes[f"gen{info['generation']}"] += 1
            passes[f"gen{info['generation']}_unreachable"] += info["collected"]

    def begin(*_: object) -> None:
        passes.clear()
        gc.callbacks.append(counted)

    def end(*_: object) -> None:
        gc.callbacks.remove(counted)
        Path(report).write_text(json.dumps({**passes, "threshold": gc.get_threshold()}))

    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
    from mcp_guard.cli import main as guard

    sys.argv = ["mcp-guard", *argv]
    guard()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def measure(tree: Path, calls: int, warmup: int, every: int, endpoint: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gc-passes-"))
    config = write_config(work, endpoint, sys.executable)
    report = work / "passes.json"
    proc = subprocess.Popen([sys.executable, __file__, "--inner", str(report), "--", "run", "--config", str(config)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    assert proc.stdin is not None
    rpc = line_rpc(proc)
    rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
    proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    proc.stdin.flush()
    while not (tools := [t["name"] for t in rpc("tools/list").get("result", {}).get("tools", []) if t["name"].endswith("echo")]):
        time.sleep(0.5)
    for i in range(warmup):
        rpc("tools/call", {"name": tools[0], "arguments": {"text": f"warm {i}"}})
    proc.send_signal(signal.SIGUSR1)
    samples = [rss(proc.pid)]
    for i in range(calls):
        answer = rpc("tools/call", {"name": tools[0], "arguments": {"text": f"hello {i}"}})
        if answer.get("result", {}).get("isError") is not False:
            sys.exit(f"the call failed: {answer}")
        if (i + 1) % every == 0:
            samples.append(rss(proc.pid))
    proc.send_signal(signal.SIGUSR2)
    while not report.exists():
        time.sleep(0.1)
    proc.stdin.close()
    proc.wait(60)
    return {"tree": str(tree), "calls": calls, **json.loads(report.read_text()), "rss_kib": samples}


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--inner"]:
        inner(argv[1], argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--every", type=int, default=2_000, help="calls between two RSS samples")
    ap.add_argument("--base", type=Path, help="a source tree (holding mcp_guard/) measured after this one")
    args = ap.parse_args(argv)
    with otlp_sink() as endpoint:
        for tree in [HERE.parent, *([args.base] if args.base else [])]:
            print(json.dumps(measure(tree, args.calls, args.warmup, args.every, endpoint)), flush=True)


if __name__ == "__main__":
    main()
