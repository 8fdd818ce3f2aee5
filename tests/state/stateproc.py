"""A second OS process using the state store (run as a script by the cross-process tests).

    python stateproc.py consume URL KEY LIMIT TRIES GO_FILE  -> prints how many calls were allowed
    python stateproc.py rate URL KEY PER_MINUTE TRIES GO_FILE -> prints how many calls were allowed
    python stateproc.py revoke URL JTI
    python stateproc.py flow URL SCOPE NAME TRIES GO_FILE -> adds TRIES labelled pieces to SCOPE's flow
                                         state, prints how many pieces the last state held
    python stateproc.py hold URL      -> opens URL as a running guard does (holder), prints "ready",
                                         then for each stdin line JTI prints the result of revoked([JTI])
                                         (or "StateError: ...") until stdin closes
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from mcp_guard.errors import StateError
from mcp_guard.state import Counter, open_store
from mcp_guard.state.base import FlowPiece, LabelOrigin


def _wait_for(go_file: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.002)


async def main(argv: list[str]) -> None:
    command, url = argv[0], argv[1]
    store = open_store(url, holder=command == "hold")
    try:
        if command == "consume":
            key, limit, tries, go = argv[2], int(argv[3]), int(argv[4]), argv[5]
            print("ready", flush=True)
            _wait_for(go)
            allowed = 0
            for _ in range(tries):
                if await store.consume([Counter(key, limit), Counter(key + ":parent", limit * 10)]) is None:
                    allowed += 1
            print(allowed, flush=True)
        elif command == "rate":
            key, per_minute, tries, go = argv[2], int(argv[3]), int(argv[4]), argv[5]
            print("ready", flush=True)
            _wait_for(go)
            allowed = sum([await store.rate(key, per_minute) for _ in range(tries)])
            print(allowed, flush=True)
        elif command == "flow":
            scope, name, tries, go = argv[2], argv[3], int(argv[4]), argv[5]
            print("ready", flush=True)
            _wait_for(go)
            flow = None
            for i in range(tries):
                origin = LabelOrigin(f"{name}-{i % 5}", f"{name}/tool", i)
                flow = await store.flow_add(scope, [origin], [FlowPiece(frozenset({name}), f"{name} piece {i}")], 1 << 20)
            print(len(flow.pieces) if flow else 0, flush=True)
        elif command == "revoke":
            await store.revoke(argv[2], "revoked from another process")
            print("revoked", flush=True)
        elif command == "hold":
            print("ready", flush=True)
            for line in sys.stdin:
                try:
                    print(await store.revoked([line.strip()]), flush=True)
                except StateError as exc:
                    print(f"StateError: {exc}", flush=True)
        else:
            raise SystemExit(f"unknown command {command}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
