"""Hosts without elicitation: the call waits in the state store's queue and a second process —
``mcp-guard approvals approve|reject ID`` — releases it; silence until ``approvals.timeout`` refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from approvalkit import GuardYaml, audit_records, text_of
from fixtures import MODES, Mode, RecordFile, guarded_session, mcp_guard_bin, tools_env

pytestmark = pytest.mark.e2e

NOTE = {"path": "/srv/tickets/9.md", "text": "queued"}


async def cli(*args: str) -> tuple[int, str, str]:
    """Run ``mcp-guard ARGS`` as a separate process, without blocking the client's event loop."""
    proc = await asyncio.create_subprocess_exec(str(mcp_guard_bin()), *args, env=tools_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def pending(config: Path) -> dict[str, Any]:
    """The one request waiting in the queue, as ``mcp-guard approvals list --json`` shows it."""
    deadline = asyncio.get_running_loop().time() + 20.0
    while asyncio.get_running_loop().time() < deadline:
        code, out, err = await cli("approvals", "list", "--json", "--config", str(config))
        assert code == 0, err
        records: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines() if line.strip()]
        if records:
            assert len(records) == 1
            return records[0]
        await asyncio.sleep(0.2)
    raise AssertionError("no approval request appeared in the queue")


@pytest.fixture
def queue_yaml(guard_yaml: GuardYaml, tmp_path: Path) -> GuardYaml:
    def make(timeout: str = "30s") -> Path:
        return guard_yaml(timeout=timeout, state=f"sqlite:///{tmp_path / 'state.db'}")

    return make


@pytest.mark.parametrize("mode", MODES)
async def test_approve_from_a_second_process_releases_the_call(mode: Mode, queue_yaml: GuardYaml, record_file: RecordFile,
                                                                tmp_path: Path) -> None:
    config = queue_yaml()
    async with guarded_session(config, mode=mode) as client:  # no elicitation_callback: no elicitation capability
        call = asyncio.ensure_future(client.call_tool("notes_write_note", NOTE))
        waiting = await pending(config)
        assert not call.done(), "the call must wait for the human"
        assert record_file.tools_called() == []
        assert waiting["tool"] == "write_note" and waiting["upstream"] == "notes"
        assert waiting["principal"] == ["user:alice@example.com", "agent:support-bot"]
        assert waiting["purpose"] == "ticket-triage"
        assert "/srv/tickets/9.md" in waiting["args_preview"]
        code, out, err = await cli("approvals", "list", "--config", str(config))
        assert code == 0 and waiting["id"] in out and "notes/write_note" in out and "alice@example.com" in out
        code, out, err = await cli("approvals", "approve", waiting["id"], "--config", str(config), "--as", "bob@ops")
        assert code == 0, err
        result = await asyncio.wait_for(call, 20)
    assert not result.is_error, text_of(result)
    assert record_file.calls() == [("write_note", NOTE)]
    last = audit_records(tmp_path)[-1]
    assert last["decision"] == "approved" and last["approver"] == "bob@ops"
    assert last["approval"]["channel"] == "queue" and last["approval"]["id"] == waiting["id"]
    assert last["approval"]["wait_s"] > 0
    # the answered request is gone from the queue and cannot be answered twice
    code, _, err = await cli("approvals", "approve", waiting["id"], "--config", str(config))
    assert code != 0 and "already approved" in err


async def test_reject_from_a_second_process_refuses(queue_yaml: GuardYaml, record_file: RecordFile, tmp_path: Path) -> None:
    config = queue_yaml()
    async with guarded_session(config, mode="legacy") as client:
        call = asyncio.ensure_future(client.call_tool("notes_write_note", NOTE))
        waiting = await pending(config)
        code, _, err = await cli("approvals", "reject", waiting["id"], "--config", str(config), "--as", "bob@ops",
                                 "--reason", "wrong ticket")
        assert code == 0, err
        result = await asyncio.wait_for(call, 20)
    assert result.is_error
    assert text_of(result) == "mcp-guard refused notes/write_note: rejected by bob@ops (wrong ticket)"
    assert record_file.tools_called() == []
    assert audit_records(tmp_path)[-1]["decision"] == "rejected"


@pytest.mark.parametrize("mode", MODES)
async def test_no_answer_within_the_timeout_refuses(mode: Mode, queue_yaml: GuardYaml, record_file: RecordFile) -> None:
    config = queue_yaml(timeout="1s")
    async with guarded_session(config, mode=mode) as client:
        result = await client.call_tool("notes_write_note", NOTE)
        assert result.is_error and text_of(result) == "mcp-guard refused notes/write_note: no human answered within 1s"
        code, out, _ = await cli("approvals", "list", "--all", "--json", "--config", str(config))
    assert code == 0
    statuses = [json.loads(line)["status"] for line in out.splitlines() if line.strip()]
    assert statuses == ["expired"]
    assert record_file.tools_called() == []
    code, _, err = await cli("approvals", "approve", json.loads(out.splitlines()[0])["id"], "--config", str(config))
    assert code != 0 and "expired" in err
