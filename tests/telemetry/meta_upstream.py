"""A tiny stdio MCP upstream (stdlib only, starts in milliseconds) that records every message whole.

Unlike ``tests/fixtures/recording_server.py`` it keeps ``params._meta``, so a test can read the
``traceparent`` the guard injected.  Each received message is appended to ``$RECORD_FILE`` as one JSON
line before it is answered.  Tools: ``echo(text)``, ``write_note(path, text)``; prompt: ``greet(who)``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOOLS = [
    {"name": "echo", "description": "Echo text.", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
    {
        "name": "write_note",
        "description": "Write a note.",
        "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}, "text": {"type": "string"}}},
    },
]


def answer(message: dict[str, Any]) -> dict[str, Any] | None:
    method, rid = message.get("method"), message.get("id")
    if rid is None:
        return None
    params = message.get("params") or {}
    if method == "initialize":
        out: dict[str, Any] = {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}, "prompts": {}},
            "serverInfo": {"name": "meta-upstream", "version": "1.0.0"},
        }
    elif method == "tools/list":
        out = {"tools": TOOLS}
    elif method == "tools/call":
        args = params.get("arguments") or {}
        out = {"content": [{"type": "text", "text": str(args.get("text", "ok"))}], "isError": False}
    elif method == "prompts/list":
        out = {"prompts": [{"name": "greet", "arguments": [{"name": "who"}]}]}
    elif method == "prompts/get":
        who = (params.get("arguments") or {}).get("who", "you")
        out = {"messages": [{"role": "user", "content": {"type": "text", "text": f"hello {who}"}}]}
    elif method == "ping":
        out = {}
    else:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"Method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": rid, "result": out}


def main() -> None:
    path = os.environ.get("RECORD_FILE")
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(message, sort_keys=True) + "\n")
        reply = answer(message)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
