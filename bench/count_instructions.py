"""Instructions the guard executes per tool call, counted by valgrind (callgrind): a figure that
does not move with the machine's load, unlike CPU time on a shared box.

Starts ``valgrind --tool=callgrind <guard command>``, initializes, makes ``--warmup`` calls, zeroes
the counters (``callgrind_control -z``), makes ``--calls`` sequential ``tools/call echo`` calls,
waits for the span export thread (``--settle``), dumps (``callgrind_control -d``) and prints the
instructions per call of the guard process, all its threads (the upstream is not counted).
Valgrind slows Python about 50x: start-up takes minutes.

  python count_instructions.py [--calls 400] [--out DIR] -- mcp-guard run --config guard.yaml

``bench/full_config.py`` writes the everything-on configuration; drop its ``telemetry``, ``audit``
or ``identity.grant`` to price each part alone.  ``callgrind_annotate`` reads the dump it leaves.
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

from line_rpc import line_rpc


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: count_instructions.py [options] -- GUARD_COMMAND ...")
    split = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--settle", type=float, default=6.0, help="seconds for the export thread before the dump")
    ap.add_argument("--out", type=Path, help="where the callgrind files go (default: a temporary directory)")
    args = ap.parse_args(argv[:split])
    out = args.out or Path(tempfile.mkdtemp(prefix="callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out.%p", *argv[split + 1:]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(out / "valgrind.log").open("w"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    rpc = line_rpc(proc)

    rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
    proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    proc.stdin.flush()
    while True:  # under valgrind the upstream may join after the start-up time-out
        names = [t["name"] for t in rpc("tools/list").get("result", {}).get("tools", []) if t["name"].endswith("echo")]
        if names:
            tool = names[0]
            break
        time.sleep(3)

    def call(text: str) -> None:
        answer = rpc("tools/call", {"name": tool, "arguments": {"text": text}})
        if answer.get("result", {}).get("isError") is not False:
            sys.exit(f"the call failed: {answer}")

    for i in range(args.warmup):
        call(f"warm {i}")
    time.sleep(args.settle)
    subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
    for i in range(args.calls):
        call(f"hello {i}")
    time.sleep(args.settle)
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    proc.stdin.close()
    proc.wait(300)
    dump = out / f"callgrind.out.{proc.pid}.1"
    total = next(int(m.group(1)) for line in dump.open() if (m := re.match(r"summary: (\d+)", line)))
    print(json.dumps({"instructions_per_call": round(total / args.calls), "calls": args.calls, "dump": str(dump)}))


if __name__ == "__main__":
    main()
