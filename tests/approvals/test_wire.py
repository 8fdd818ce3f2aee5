"""Wire details the SDK client hides, checked with raw JSON lines over the guard's stdio."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from approvalkit import GuardYaml
from fixtures import RecordFile, guard_command, tools_env

pytestmark = pytest.mark.e2e

NOTE = {"path": "/srv/tickets/1.md", "text": "raw"}


class RawHost:
    """A host speaking newline-delimited JSON-RPC to ``mcp-guard run``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
            assert line, "the guard closed stdout"
            message: dict[str, Any] = json.loads(line)
            if message.get("method", "").startswith("notifications/"):
                continue
            return message

    async def handshake(self, version: str, capabilities: dict[str, Any]) -> None:
        await self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": capabilities, "clientInfo": {"name": "raw-host", "version": "1"}}})
        reply = await self.receive()
        assert reply["result"]["protocolVersion"] == version
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


@contextlib.asynccontextmanager
async def raw_guard(config: Path) -> AsyncIterator[RawHost]:
    proc = await asyncio.create_subprocess_exec(*guard_command(config), cwd=config.parent, env=tools_env(),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        yield RawHost(proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def call(rid: int, args: dict[str, Any] = NOTE) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "notes_write_note", "arguments": args}}


async def test_2025_06_18_elicitation_has_no_mode(guard_yaml: GuardYaml, record_file: RecordFile) -> None:
    async with raw_guard(guard_yaml()) as host:
        await host.handshake("2025-06-18", {"elicitation": {}})
        await host.send(call(1))
        ask = await host.receive()
        assert ask["method"] == "elicitation/create"
        assert "mode" not in ask["params"], "2025-06-18 knows no elicitation modes"
        assert set(ask["params"]) == {"message", "requestedSchema"}
        assert "raw-host" not in ask["params"]["message"]  # the host is the approver, not the subject
        await host.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {"approve": True}}})
        done = await host.receive()
    assert done["id"] == 1 and not done["result"].get("isError"), done
    assert record_file.tools_called() == ["write_note"]


async def test_2025_11_25_form_elicitation_says_form(guard_yaml: GuardYaml, record_file: RecordFile) -> None:
    async with raw_guard(guard_yaml()) as host:
        await host.handshake("2025-11-25", {"elicitation": {"form": {}}})
        await host.send(call(1))
        ask = await host.receive()
        assert ask["params"]["mode"] == "form"
        await host.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {"approve": False}}})
        done = await host.receive()
    assert done["result"]["isError"] is True
    assert record_file.tools_called() == []


async def test_url_only_host_is_not_sent_a_form(guard_yaml: GuardYaml, record_file: RecordFile) -> None:
    """A host that declared only URL elicitation must not get a form: the call goes to the queue."""
    async with raw_guard(guard_yaml(timeout="1s")) as host:
        await host.handshake("2025-11-25", {"elicitation": {"url": {}}})
        await host.send(call(1))
        done = await host.receive()
    assert "method" not in done, "no elicitation/create may reach a URL-only host"
    assert done["result"]["isError"] is True and "no human answered within 1s" in done["result"]["content"][0]["text"]
    assert record_file.tools_called() == []


async def test_cancelled_call_withdraws_its_queued_request(guard_yaml: GuardYaml, record_file: RecordFile, tmp_path: Path) -> None:
    from mcp_guard.state import open_store

    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with raw_guard(guard_yaml(state=url)) as host:
        await host.handshake("2025-11-25", {})
        await host.send(call(1))
        store = open_store(url)
        try:
            for _ in range(100):
                if await store.approval_list():
                    break
                await asyncio.sleep(0.1)
            (waiting,) = await store.approval_list()
            await host.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
            for _ in range(100):
                record = await store.approval_get(waiting["id"])
                if record and record["status"] != "pending":
                    break
                await asyncio.sleep(0.1)
            assert record is not None and record["status"] == "abandoned" and record["approver"] == "mcp-guard"
            assert not await store.approval_resolve(waiting["id"], True, "late@ops")
        finally:
            await store.close()
    assert record_file.tools_called() == []
