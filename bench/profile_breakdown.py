"""Where a Python proxy's CPU goes, by layer, from a py-spy raw profile.

  py-spy record --pid PID -d 10 -r 200 --gil --format raw -o serve.raw   # while wrk runs
  python profile_breakdown.py serve.raw [--top 15]

``--gil`` keeps only samples of the thread holding the GIL: Python work, without the time spent
in system calls (which release it; read those from utime/stime in /proc/PID/stat).

Each sample goes to the innermost frame that belongs to a known layer (the HTTP server in front,
the HTTP client to the upstream, the guard's own modules by name, the OTLP export thread); frames
of the event loop and of h11 (used on both sides) are looked through. Native ``send``/``recv``/
``epoll`` frames (needs ``--native``) are counted separately as socket system calls, whatever
layer issued them (for a ``--native`` profile).
"""

from __future__ import annotations

import argparse
import collections
import re

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
LAYERS = [  # (path fragment, layer), first match wins for a frame
    ("mcp/client/", "HTTP client to the upstream (mcp SDK transport)"),
    ("httpx2/", "HTTP client to the upstream (httpx2, httpcore2)"),
    ("httpcore2/", "HTTP client to the upstream (httpx2, httpcore2)"),
    ("uvicorn/", "HTTP server (uvicorn, Starlette)"),
    ("starlette/", "HTTP server (uvicorn, Starlette)"),
    ("pydantic", "pydantic (SDK message models)"),
    ("mcp_types/", "pydantic (SDK message models)"),
]
SYSCALLS = ("send", "recv", "sendmsg", "recvmsg", "__libc_send", "__libc_recv", "write", "read", "__send", "__recv")


IDLE = ("Condition.wait", "Event.wait", "Thread._wait_for_tstate_lock")  # a sleeping thread py-spy counted


def layer_of(file: str, func: str) -> str | None:
    if "mcp_guard/cli/" in file:
        return None  # the command that started the event loop: look through it
    if "mcp_guard/" in file:
        module = file.split("mcp_guard/", 1)[1].removesuffix(".py").replace("/", ".")
        if module == "telemetry.export" or (module == "telemetry.spans" and func.startswith("LightSpan.readable")):
            return "guard: OTLP export thread"
        return f"guard: {module}"
    for fragment, layer in LAYERS:
        if fragment in file:
            return layer
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    by_layer: collections.Counter[str] = collections.Counter()
    sys_calls = total = 0
    with open(args.raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [m.groupdict() for fr in stack.split(";") if (m := FRAME.match(fr))]
            if any(fr["func"] in IDLE and "threading" in fr["file"] for fr in frames[-3:]):
                total -= n
                continue
            if frames and frames[-1]["func"] in SYSCALLS and ".so" in frames[-1]["file"]:
                sys_calls += n
            for fr in reversed(frames):
                layer = layer_of(fr["file"], fr["func"])
                if layer is not None:
                    by_layer[layer] += n
                    break
            else:
                by_layer["event loop (asyncio, anyio, selectors), h11, other"] += n
    print(f"{total} samples; socket system calls (innermost native frame): {sys_calls / max(total, 1):.0%}")
    print("| layer | share of samples |\n|---|---|")
    for layer, n in by_layer.most_common(args.top):
        print(f"| {layer} | {n / total:.1%} |")


if __name__ == "__main__":
    main()
