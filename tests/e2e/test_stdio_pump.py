"""A real ``mcp-guard run`` between a host that reads slowly and a raw line-level upstream
(``fixtures/raw_upstream.py``): what the guard does after an answer's bytes are handed to the
host's pipe never changes what the host receives."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from fixtures import ALLOW_ALL, FIXTURES_DIR, stdio_upstream, write_guard_config
from helpers_proxy import raw_guard

BIG = 4_000_000  # far more than a pipe holds: the guard's write of it waits for the host to read


async def test_a_cancel_that_arrives_while_the_answer_is_being_written_changes_nothing(tmp_path: Path) -> None:
    upstream = stdio_upstream([sys.executable, str(FIXTURES_DIR / "raw_upstream.py"), "plain"], protocol="legacy")
    config = write_guard_config(tmp_path, {"raw": upstream}, ALLOW_ALL)
    async with raw_guard(config, process=True) as guard:
        await guard.initialize()
        await guard.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "raw_probe", "arguments": {"size": BIG}}})
        stdout = guard.proc.stdout
        assert stdout is not None
        head = await asyncio.wait_for(stdout.readexactly(64), 30)  # the answer is on its way out
        await guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
        await guard.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": "raw_probe", "arguments": {"n": 2}}})
        first = json.loads(head + await asyncio.wait_for(stdout.readline(), 30))
        assert first["id"] == 1 and first["result"]["content"][0]["text"] == "x" * BIG
        second = await guard.recv()  # the very next line: no error or second answer for the cancelled request
        assert second["id"] == 2 and json.loads(second["result"]["content"][0]["text"]) == [["arguments", "name"], {"n": 2}]


async def test_an_upstream_that_answers_twice_through_the_process_is_heard_once(tmp_path: Path) -> None:
    upstream = stdio_upstream([sys.executable, str(FIXTURES_DIR / "raw_upstream.py"), "twice"], protocol="legacy")
    config = write_guard_config(tmp_path, {"raw": upstream}, ALLOW_ALL)
    async with raw_guard(config, process=True) as guard:
        await guard.initialize()
        for rid in ("a", "b", "c"):
            await guard.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                              "params": {"name": "raw_probe", "arguments": {"rid": rid}}})
            answer = await guard.recv()
            assert answer["id"] == rid
            assert json.loads(answer["result"]["content"][0]["text"]) == [["arguments", "name"], {"rid": rid}]
        pong = await guard.request("ping")
        assert pong["result"] == {} and guard.others == []  # nothing else reached the host before it
