"""The 2026-07-28 round trip driven by hand: the sealed ``requestState`` answers one call, once.

``client.session.call_tool(..., allow_input_required=True)`` returns the guard's
``InputRequiredResult`` instead of letting the SDK drive it, so a test can replay, alter, forge
or re-bind the state the way an attacker holding the host would.
"""

from __future__ import annotations

import asyncio
import base64

import mcp_types as types
import pytest
from approvalkit import GuardYaml, Host, text_of
from fixtures import RecordFile, guarded_session

from mcp_guard.proxy.approval_text import APPROVAL_KEY

pytestmark = pytest.mark.e2e

NOTE = {"path": "/srv/tickets/7.md", "text": "hello"}
YES: types.InputResponses = {APPROVAL_KEY: types.ElicitResult(action="accept", content={"approve": True})}
REFUSED = "the approval state is invalid, expired or already used"


def _flip(state: str) -> str:
    """The same state with one bit of the ciphertext changed."""
    raw = bytearray(base64.urlsafe_b64decode(state + "=" * (-len(state) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


async def test_state_is_single_use_and_tamper_proof(guard_yaml: GuardYaml, host: Host, record_file: RecordFile) -> None:
    async with guarded_session(guard_yaml(), mode="auto", elicitation_callback=host) as client:
        call = client.session.call_tool

        first = await call("notes_write_note", NOTE, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        assert first.input_requests is not None and set(first.input_requests) == {APPROVAL_KEY}
        ask = first.input_requests[APPROVAL_KEY]
        assert isinstance(ask, types.ElicitRequest) and isinstance(ask.params, types.ElicitRequestFormParams)
        assert "alice@example.com" in ask.params.message and "notes/write_note" in ask.params.message
        state = first.request_state
        assert state is not None and "write_note" not in state  # sealed, not just signed: nothing readable

        ok = await call("notes_write_note", NOTE, input_responses=YES, request_state=state, allow_input_required=True)
        assert isinstance(ok, types.CallToolResult) and not ok.is_error, ok

        replay = await call("notes_write_note", NOTE, input_responses=YES, request_state=state, allow_input_required=True)
        assert isinstance(replay, types.CallToolResult) and replay.is_error and REFUSED in text_of(replay)

        fresh = await call("notes_write_note", NOTE, allow_input_required=True)
        assert isinstance(fresh, types.InputRequiredResult) and fresh.request_state is not None
        altered = await call("notes_write_note", NOTE, input_responses=YES, request_state=_flip(fresh.request_state),
                             allow_input_required=True)
        assert isinstance(altered, types.CallToolResult) and altered.is_error and REFUSED in text_of(altered)

        forged = await call("notes_write_note", NOTE, input_responses=YES,
                            request_state=base64.urlsafe_b64encode(b'{"v":1,"n":"x"}' * 4).decode(), allow_input_required=True)
        assert isinstance(forged, types.CallToolResult) and forged.is_error and REFUSED in text_of(forged)

        # a state approved for these arguments does not carry other arguments
        other = await call("notes_write_note", {**NOTE, "text": "rm -rf /"}, input_responses=YES,
                           request_state=fresh.request_state, allow_input_required=True)
        assert isinstance(other, types.CallToolResult) and other.is_error and REFUSED in text_of(other)

    assert record_file.calls() == [("write_note", NOTE)]
    assert host.seen == [], "the raw round trip never reached the elicitation callback"


async def test_answer_without_state_or_state_without_answer_asks_again(guard_yaml: GuardYaml, host: Host,
                                                                       record_file: RecordFile) -> None:
    async with guarded_session(guard_yaml(), mode="auto", elicitation_callback=host) as client:
        call = client.session.call_tool
        unbound = await call("notes_write_note", NOTE, input_responses=YES, allow_input_required=True)
        assert isinstance(unbound, types.InputRequiredResult), "a bare 'yes' must not approve anything"

        first = await call("notes_write_note", NOTE, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        empty = await call("notes_write_note", NOTE, input_responses={}, request_state=first.request_state,
                           allow_input_required=True)
        assert isinstance(empty, types.InputRequiredResult) and empty.request_state != first.request_state
        # the first state was consumed by that retry
        used = await call("notes_write_note", NOTE, input_responses=YES, request_state=first.request_state,
                          allow_input_required=True)
        assert isinstance(used, types.CallToolResult) and used.is_error
        ok = await call("notes_write_note", NOTE, input_responses=YES, request_state=empty.request_state,
                        allow_input_required=True)
        assert isinstance(ok, types.CallToolResult) and not ok.is_error
    assert record_file.tools_called() == ["write_note"]


async def test_state_expires_with_the_approval_timeout(guard_yaml: GuardYaml, host: Host, record_file: RecordFile) -> None:
    async with guarded_session(guard_yaml(timeout="1s"), mode="auto", elicitation_callback=host) as client:
        first = await client.session.call_tool("notes_write_note", NOTE, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        await asyncio.sleep(1.3)
        late = await client.session.call_tool("notes_write_note", NOTE, input_responses=YES,
                                              request_state=first.request_state, allow_input_required=True)
        assert isinstance(late, types.CallToolResult) and late.is_error and REFUSED in text_of(late)
    assert record_file.tools_called() == []


async def test_modern_host_without_elicitation_gets_no_input_required(guard_yaml: GuardYaml, record_file: RecordFile) -> None:
    """No ``elicitation`` in the request's clientCapabilities: never an input_required it cannot answer."""
    async with guarded_session(guard_yaml(timeout="1s"), mode="auto") as client:
        result = await client.session.call_tool("notes_write_note", NOTE, allow_input_required=True)
    assert isinstance(result, types.CallToolResult) and result.is_error
    assert "no human answered within 1s" in text_of(result)
    assert record_file.tools_called() == []
