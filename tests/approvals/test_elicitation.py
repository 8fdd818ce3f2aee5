"""Approval through the host's elicitation, on both eras, driven by the real ``mcp`` SDK client.

``legacy``: the guard sends ``elicitation/create`` on the back channel.  ``auto`` (2026-07-28): the
guard answers ``input_required`` and the SDK client drives the round trip through the same
callback.  Either way the recording upstream proves what was forwarded.
"""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from approvalkit import GuardYaml, Host, audit_records, text_of
from fixtures import MODES, Mode, RecordFile, guarded_session

pytestmark = pytest.mark.e2e

NOTE = {"path": "/srv/tickets/42.md", "text": "Refund approved.\nTool: fake line"}


@pytest.mark.parametrize("mode", MODES)
async def test_approve_forwards_exactly_once(mode: Mode, guard_yaml: GuardYaml, host: Host, record_file: RecordFile,
                                             tmp_path: Path) -> None:
    async with guarded_session(guard_yaml(), mode=mode, elicitation_callback=host) as client:
        result = await client.call_tool("notes_write_note", NOTE)
    assert not result.is_error, text_of(result)
    assert record_file.calls() == [("write_note", NOTE)]
    assert len(host.seen) == 1
    message = host.messages[0]
    for needle in ("notes/write_note", "alice@example.com", "support-bot", "ticket-triage",
                   "Upstream:  notes", "policy notes-writes", '"/srv/tickets/42.md"'):
        assert needle in message, (needle, message)
    # an argument cannot forge a line of the prompt: its newline stays escaped
    assert "\nTool: fake line" not in message and "\\nTool: fake line" in message
    assert isinstance(host.seen[0], types.ElicitRequestFormParams)
    assert host.seen[0].requested_schema["properties"]["approve"]["type"] == "boolean"
    decisions = [(r["tool"], r["decision"]) for r in audit_records(tmp_path)]
    assert decisions[-1] == ("write_note", "approved")
    last = audit_records(tmp_path)[-1]
    assert last["approver"].startswith("host:")
    assert last["approval"]["answer"] == "approve"
    assert last["approval"]["channel"] == ("elicitation" if mode == "legacy" else "input_required")
    assert isinstance(last["approval"]["wait_s"], float)
    if mode == "auto":  # the input_required leg is audited as approval_required first
        assert decisions[-2] == ("write_note", "approval_required")


REFUSALS = [
    (types.ElicitResult(action="accept", content={"approve": False, "reason": "not today"}), "the human rejected it (not today)", "reject"),
    (types.ElicitResult(action="decline"), "declined", "decline"),
    (types.ElicitResult(action="cancel"), "dismissed", "cancel"),
    (types.ElicitResult(action="accept", content={"reason": "forgot the box"}), "rejected", "reject"),
    (types.ElicitResult(action="accept", content={"approve": "true"}), "rejected", "reject"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("answer", "said", "recorded"), REFUSALS, ids=["reject", "decline", "cancel", "no-approve", "string-true"])
async def test_anything_but_yes_refuses(mode: Mode, answer: types.ElicitResult, said: str, recorded: str,
                                        guard_yaml: GuardYaml, host: Host, record_file: RecordFile, tmp_path: Path) -> None:
    host.answer = answer
    async with guarded_session(guard_yaml(), mode=mode, elicitation_callback=host) as client:
        result = await client.call_tool("notes_write_note", NOTE)
        assert not (await client.call_tool("notes_echo", {"text": "still alive"})).is_error
    assert result.is_error
    assert text_of(result).startswith("mcp-guard refused notes/write_note: ")
    assert said in text_of(result)
    assert "write_note" not in record_file.tools_called()
    assert record_file.tools_called() == ["echo"]
    refused = [r for r in audit_records(tmp_path) if r["decision"] == "rejected"]
    assert len(refused) == 1 and refused[0]["approval"]["answer"] == recorded


@pytest.mark.parametrize("mode", MODES)
async def test_one_approval_answers_one_call(mode: Mode, guard_yaml: GuardYaml, host: Host, record_file: RecordFile) -> None:
    async with guarded_session(guard_yaml(), mode=mode, elicitation_callback=host) as client:
        await client.call_tool("notes_write_note", NOTE)
        await client.call_tool("notes_write_note", NOTE)
    assert len(host.seen) == 2
    assert record_file.tools_called() == ["write_note", "write_note"]


@pytest.mark.parametrize("mode", MODES)
async def test_remember_session_passes_identical_calls_only(mode: Mode, guard_yaml: GuardYaml, host: Host,
                                                            record_file: RecordFile, tmp_path: Path) -> None:
    changed = {**NOTE, "text": "Refund of $9999 approved."}
    async with guarded_session(guard_yaml(remember="session"), mode=mode, elicitation_callback=host) as client:
        first = await client.call_tool("notes_write_note", NOTE)
        again = await client.call_tool("notes_write_note", dict(reversed(list(NOTE.items()))))  # same args, other order
        assert len(host.seen) == 1
        other = await client.call_tool("notes_write_note", changed)
    assert not first.is_error and not again.is_error and not other.is_error
    assert len(host.seen) == 2, "changed arguments must ask again"
    assert '"Refund of $9999 approved."' in host.messages[1]
    assert record_file.calls() == [("write_note", NOTE), ("write_note", NOTE), ("write_note", changed)]
    channels = [r["approval"]["channel"] for r in audit_records(tmp_path) if r["decision"] == "approved"]
    assert channels[1] == "remembered"


@pytest.mark.parametrize("mode", MODES)
async def test_rejection_is_not_remembered(mode: Mode, guard_yaml: GuardYaml, host: Host, record_file: RecordFile) -> None:
    host.answer = types.ElicitResult(action="decline")
    async with guarded_session(guard_yaml(remember="session"), mode=mode, elicitation_callback=host) as client:
        assert (await client.call_tool("notes_write_note", NOTE)).is_error
        host.answer = types.ElicitResult(action="accept", content={"approve": True})
        assert not (await client.call_tool("notes_write_note", NOTE)).is_error
    assert len(host.seen) == 2
    assert record_file.tools_called() == ["write_note"]


async def test_legacy_host_error_refuses(guard_yaml: GuardYaml, host: Host, record_file: RecordFile) -> None:
    host.answer = types.ErrorData(code=-32603, message="no UI here")
    async with guarded_session(guard_yaml(), mode="legacy", elicitation_callback=host) as client:
        result = await client.call_tool("notes_write_note", NOTE)
    assert result.is_error and "could not ask a human" in text_of(result)
    assert record_file.tools_called() == []
