"""JSON-RPC over a child's stdin/stdout, one line per message: the benches' raw client (no SDK
in the measured loop)."""

from __future__ import annotations

import itertools
import json
import subprocess
from typing import Any


def line_rpc(proc: subprocess.Popen[bytes]) -> Any:
    """A ``rpc(method, params=None)`` that writes one request and returns the answer with its id
    (notifications and other answers on the way are skipped)."""
    ids = itertools.count(1)

    def rpc(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": next(ids), "method": method}
        if params is not None:
            msg["params"] = params
        proc.stdin.write(json.dumps(msg).encode() + b"\n")
        proc.stdin.flush()
        while True:
            answer: dict[str, Any] = json.loads(proc.stdout.readline())
            if answer.get("id") == msg["id"]:
                return answer

    return rpc
