"""How late an event loop's timer fires while the span export thread encodes batches: the loop's
wait for the GIL.

  python gil_wait.py [--seconds 4] [--yield-every 64]

Collects the records of 1,000 guarded calls (as ``telemetry_loop.py --encode`` does), then runs an
asyncio loop that sleeps 1 ms at a time and notes how late each wake-up is, beside a thread that
encodes 512-span batches back to back (2 ms apart, a POST's pause): first with no encoder (idle),
then with the encoder handing the GIL over every ``--yield-every`` spans, then with no hand-over
(``--yield-every 0``).  Wall-clock figures: compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def records() -> tuple[Any, list[Any]]:
    import telemetry_loop

    from mcp_guard.telemetry.wire import RecordEncoder

    captured: dict[str, Any] = {}

    def keep(recorder: Any, path: str, warm: list[Any], found: list[Any]) -> None:
        captured.update(recorder=recorder, warm=warm, records=found)

    telemetry_loop._encode = keep  # type: ignore[assignment]
    telemetry_loop.inner(1000, "http://127.0.0.1:9", "wire")
    recorder = captured["recorder"]
    encoder = RecordEncoder(recorder.resource, recorder.scope)
    encoder.records(captured["warm"])
    return encoder, captured["records"][:512]


def lateness(seconds: float, encode: Any | None) -> dict[str, float]:
    stop = threading.Event()

    def export() -> None:
        while not stop.is_set():
            encode()
            time.sleep(0.002)

    thread = threading.Thread(target=export, daemon=True) if encode is not None else None
    if thread is not None:
        thread.start()

    async def wake_ups() -> list[float]:
        late = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append((time.perf_counter() - started - 0.001) * 1000)
        return late

    late = sorted(asyncio.run(wake_ups()))
    stop.set()
    if thread is not None:
        thread.join()
    return {f"p{p}_ms": round(late[int(p / 100 * (len(late) - 1))], 3) for p in (50, 90, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--yield-every", type=int, default=64)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from mcp_guard.telemetry import wire

    encoder, batch = records()
    rows = {"idle": lateness(args.seconds, None)}
    for label, every in ((f"hand-over every {args.yield_every}", args.yield_every), ("no hand-over", 1 << 30)):
        wire.YIELD_EVERY = every
        rows[label] = lateness(args.seconds, lambda: encoder.records(batch))
    print(json.dumps({"switch_interval_ms": sys.getswitchinterval() * 1000, **rows}))


if __name__ == "__main__":
    main()
