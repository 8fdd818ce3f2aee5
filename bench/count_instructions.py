"""Instructions the guard executes per tool call, counted by valgrind (callgrind): a figure that
does not move with the machine's load, unlike CPU time on a shared box.

Starts ``valgrind --tool=callgrind <guard command>``, initializes, makes ``--warmup`` calls, zeroes
the counters (``callgrind_control -z``), makes ``--calls`` sequential ``tools/call echo`` calls,
waits for the span export thread (``--settle``), dumps (``callgrind_control -d``) and prints the
instructions per call of the guard process, all its threads (the upstream is not counted), and of
its main thread alone (the event loop: what a call waits for; the export threads run beside it).
Valgrind slows Python about 50x: start-up takes minutes.

  python count_instructions.py [--calls 400] [--out DIR] -- mcp-guard run --config guard.yaml
  python count_instructions.py --per-part [--base DIR] [--calls 300]

``--per-part`` prices the everything-on configuration part by part (``full_config.py --parts``):
the bare line forwarder, the policy alone, + grant chain, + audit, + traces, + metrics (everything
on), one JSON line each, with an OTLP sink of its own; ``--base DIR`` runs the guard rows from the
source tree ``DIR`` as well (``PYTHONPATH=DIR``), for before and after.  ``callgrind_annotate``
reads the dumps it leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from full_config import write as write_config
from line_rpc import line_rpc
from otlp_sink import RECEIVED, otlp_sink

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ECHO = [sys.executable, str(HERE / "echo_server.py")]
PER_PART = (  # row label, full_config.py parts (None: the bare line forwarder)
    ("passthrough", None),
    ("policy", ()),
    ("+grant", ("grant",)),
    ("+audit", ("grant", "audit")),
    ("+traces", ("grant", "audit", "traces")),
    ("full", ("grant", "audit", "traces", "metrics")),
)


def count(command: Sequence[str], *, calls: int = 400, warmup: int = 200, settle: float = 6.0, out: Path | None = None,
          env: dict[str, str] | None = None, valgrind: Sequence[str] = ()) -> dict[str, object]:
    """Run ``command`` under callgrind (with the extra ``valgrind`` options) and return
    ``{"instructions_per_call", "calls", "dump"}``."""
    out = out or Path(tempfile.mkdtemp(prefix="callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    # run from the tree PYTHONPATH names: ``python -m`` puts the working directory first on sys.path,
    # so started from another checkout it would import that checkout's mcp_guard instead
    tree = (env or {}).get("PYTHONPATH")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes", *valgrind, f"--callgrind-out-file={out}/callgrind.out.%p",
         *command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(out / "valgrind.log").open("w"), env=env,
        cwd=tree if tree and os.path.isdir(tree) else None,
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

    for i in range(warmup):
        call(f"warm {i}")
    time.sleep(settle)
    posted = dict(RECEIVED)  # what the guard had exported to this process's sink (--per-part) so far
    subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
    for i in range(calls):
        call(f"hello {i}")
    time.sleep(settle)
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    posts = {path: n - posted.get(path, 0) for path, n in RECEIVED.items() if n > posted.get(path, 0)}
    proc.stdin.close()
    proc.wait(300)
    dumps = sorted(out.glob(f"callgrind.out.{proc.pid}.1-*"))  # one per thread; -01 is the main thread
    per_thread = [next(int(m.group(1)) for line in d.open() if (m := re.match(r"summary: (\d+)", line))) for d in dumps]
    return {"instructions_per_call": round(sum(per_thread) / calls), "main_thread_per_call": round(per_thread[0] / calls),
            "per_thread_per_call": [round(n / calls) for n in per_thread], "posts_while_counted": posts,
            "calls": calls, "dump": str(dumps[0])}


def per_part_commands(work: Path, endpoint: str, base: Path | None) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """(label, command, environment) for every row of ``--per-part``: this tree, then ``base``."""
    trees = [("", ROOT)] + ([("base ", base)] if base is not None else [])
    yield "passthrough", [sys.executable, str(HERE / "passthrough_proxy.py"), "--", *ECHO], dict(os.environ)
    for prefix, tree in trees:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        for label, parts in PER_PART[1:]:
            assert parts is not None
            config = write_config(work / f"{prefix.strip() or 'this'}-{label.strip('+')}", endpoint, sys.executable, parts)
            yield prefix + label, [sys.executable, "-m", "mcp_guard", "run", "--config", str(config)], env


def per_part(calls: int, warmup: int, settle: float, out: Path, base: Path | None,
             only: set[str] | None = None) -> list[dict[str, object]]:
    """Every row of ``--per-part`` (or those named in ``only``), printed as one JSON line each as it is measured."""
    rows: list[dict[str, object]] = []
    with otlp_sink() as endpoint:
        for label, command, env in per_part_commands(out, endpoint, base):
            if only is not None and label.removeprefix("base ") not in only:
                continue
            row = {"label": label, **count(command, calls=calls, warmup=warmup, settle=settle, out=out / "callgrind", env=env)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--settle", type=float, default=6.0, help="seconds for the export thread before the dump")
    ap.add_argument("--out", type=Path, help="where the callgrind files go (default: a temporary directory)")
    ap.add_argument("--per-part", action="store_true", help="price the everything-on configuration part by part")
    ap.add_argument("--base", type=Path, help="with --per-part: a source tree (holding mcp_guard/) measured beside this one")
    ap.add_argument("--rows", help="with --per-part: only these rows, comma-separated (" + ",".join(r for r, _ in PER_PART) + ")")
    args = ap.parse_args(argv[:split])
    command = argv[split + 1:]
    out = args.out or Path(tempfile.mkdtemp(prefix="callgrind-"))
    if args.per_part:
        per_part(args.calls, args.warmup, args.settle, out, args.base, set(args.rows.split(",")) if args.rows else None)
    elif command:
        print(json.dumps(count(command, calls=args.calls, warmup=args.warmup, settle=args.settle, out=out)))
    else:
        sys.exit("usage: count_instructions.py [options] -- GUARD_COMMAND ...  |  count_instructions.py --per-part")

if __name__ == "__main__":
    main()
