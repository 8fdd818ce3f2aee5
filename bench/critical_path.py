"""Instructions on a stdio call's critical path, counted by valgrind (callgrind) in the guard process.

A call waits for the guard twice: from the host's request line arriving on stdin to the request's
bytes written to the upstream's stdin (``request``), and from the upstream's answer arriving on its
stdout to the answer's bytes written to the host's stdout (``answer``).  What the guard does after
either write (bookkeeping) costs CPU but no latency.  This counts only those two windows: the
guard runs under ``valgrind --tool=callgrind --collect-atstart=no`` inside a wrapper that switches
collection on when the window's first bytes arrive (the first Python the loop runs after the
read) and off at the window's write (the next ``StreamWriter.write``), with a toggle compiled from valgrind's ``callgrind.h`` (``cc``).  Calls
are sequential ``tools/call echo`` as in ``count_instructions.py``; nothing else runs on the loop.

  python critical_path.py [--calls 300] [--warmup 150] [--parts grant,audit] [--base DIR]

prints one JSON line per source tree (this one, then ``--base``): the instructions per call in
each window (``count_instructions.py`` counts the whole call).  The wrapper adds one Python call
and one ``ctypes`` call per window edge to each figure, the same for every tree.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOGGLE_C = """
#include <valgrind/callgrind.h>
static int collecting = 0;
void window_open(void) { if (!collecting) { collecting = 1; CALLGRIND_TOGGLE_COLLECT; } }
void window_close(void) { if (collecting) { collecting = 0; CALLGRIND_TOGGLE_COLLECT; } }
"""


def build_toggle(directory: Path) -> Path:
    """The two window edges as a shared library (valgrind's client requests are machine code)."""
    source, library = directory / "toggle.c", directory / "toggle.so"
    source.write_text(TOGGLE_C)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def inside(window: str, library: str, argv: list[str]) -> None:
    """In the guard process: hook the window's edges, then run the ``mcp-guard`` command line."""
    from mcp_guard.transports import stdio as host_stdio
    from mcp_guard.upstreams import stdio as upstream_stdio

    toggle = ctypes.CDLL(library)
    window_open, window_close = toggle.window_open, toggle.window_close
    write = asyncio.StreamWriter.write

    def closing_write(self: asyncio.StreamWriter, data: Any) -> None:
        window_close()
        write(self, data)

    asyncio.StreamWriter.write = closing_write  # type: ignore[method-assign]
    if window == "request":
        received = host_stdio._Input.data_received

        def opening_received(self: Any, data: bytes) -> None:
            window_open()
            received(self, data)

        host_stdio._Input.data_received = opening_received  # type: ignore[method-assign]
    elif hasattr(upstream_stdio, "_Stdout"):  # the loop reads the child's stdout pipe directly
        received_out = upstream_stdio._Stdout.data_received

        def opening_out(self: Any, data: bytes) -> None:
            window_open()
            received_out(self, data)

        upstream_stdio._Stdout.data_received = opening_out  # type: ignore[method-assign]
    else:  # stdout is a subprocess transport's pipe, whose reads uvloop hands on a loop turn later: open at the read
        import uvloop.loop

        pipe = uvloop.loop.ReadSubprocessPipeProto
        received_pipe = pipe.data_received

        def opening_pipe(self: Any, data: bytes) -> None:
            if self.fd == 1:
                window_open()
            received_pipe(self, data)

        pipe.data_received = opening_pipe
    sys.argv = ["mcp-guard", *argv]
    runpy.run_module("mcp_guard", run_name="__main__")


def measure(tree: Path, parts: tuple[str, ...], calls: int, warmup: int, work: Path) -> dict[str, Any]:
    from count_instructions import count
    from full_config import write as write_config

    config = write_config(work / f"{tree.name}-config", "http://127.0.0.1:9", sys.executable, parts)
    library = build_toggle(work)
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}"}
    row: dict[str, Any] = {"tree": str(tree), "parts": list(parts)}
    for window in ("request", "answer"):
        command = [sys.executable, str(HERE / "critical_path.py"), "--inside", window, str(library), "--",
                   "run", "--config", str(config)]
        got = count(command, calls=calls, warmup=warmup, settle=1.0, out=work / f"{tree.name}-{window}", env=env,
                    valgrind=("--collect-atstart=no",))
        row[window] = got["main_thread_per_call"]
    return row


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--inside"]:
        split = argv.index("--")
        inside(argv[1], argv[2], argv[split + 1:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--parts", default="", help="full_config.py parts on top of the policy (default: the policy alone)")
    ap.add_argument("--base", type=Path, help="a source tree (holding mcp_guard/) measured after this one")
    args = ap.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    work = Path(tempfile.mkdtemp(prefix="critical-"))
    for tree in [ROOT, *([args.base.resolve()] if args.base else [])]:
        print(json.dumps(measure(tree, parts, args.calls, args.warmup, work)), flush=True)


if __name__ == "__main__":
    main()
