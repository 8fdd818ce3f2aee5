"""``relay.settle``: a 2026-07-28 upstream's ``input_required`` answered for a handshake-era host."""

from __future__ import annotations

from typing import Any

from mcp_guard.jsonrpc import error, result
from mcp_guard.proxy.relay import MAX_ROUNDS, settle

ASK = {"confirm": {"method": "elicitation/create", "params": {"message": "ok?"}}}


class Upstream:
    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    async def call(self, params: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(params)
        return self.answers.pop(0) if self.answers else result(1, {"resultType": "input_required", "inputRequests": ASK})


async def yes(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return result(None, {"action": "accept", "content": {"confirmed": True}, "asked": method})


async def test_answers_go_back_with_the_state_exactly_as_given() -> None:
    up = Upstream(result(1, {"resultType": "input_required", "inputRequests": ASK, "requestState": "opaque\u2603"}),
                  result(2, {"resultType": "complete", "content": []}))
    out = await settle(up.call, {"name": "t", "requestState": "stale", "inputResponses": {"x": 1}}, yes)
    assert out["result"]["resultType"] == "complete"
    assert up.sent[0] == {"name": "t", "requestState": "stale", "inputResponses": {"x": 1}}  # the first goes as sent
    assert up.sent[1]["requestState"] == "opaque\u2603"
    assert up.sent[1]["inputResponses"] == {"confirm": {"action": "accept", "content": {"confirmed": True}, "asked": "elicitation/create"}}


async def test_no_state_given_none_sent() -> None:
    up = Upstream(result(1, {"resultType": "input_required", "inputRequests": ASK}), result(2, {"content": []}))
    await settle(up.call, {"name": "t", "requestState": "from-the-host"}, yes)
    assert "requestState" not in up.sent[1]


async def test_a_question_the_host_does_not_answer_fails_the_request() -> None:
    async def refuse(method: str, params: dict[str, Any]) -> dict[str, Any]:
        return error(None, -32601, "mcp-guard cannot relay elicitation/create to this host")

    up = Upstream(result(1, {"resultType": "input_required", "inputRequests": ASK}))
    out = await settle(up.call, {"name": "t"}, refuse)
    assert "cannot relay elicitation/create" in out["error"]["message"] and len(up.sent) == 1


async def test_an_upstream_that_keeps_asking_is_cut_off() -> None:
    up = Upstream()
    out = await settle(up.call, {"name": "t"}, yes)
    assert "more than" in out["error"]["message"] and len(up.sent) == MAX_ROUNDS + 1


async def test_an_empty_or_malformed_question_fails_closed() -> None:
    for asked in ({}, None, "x"):
        up = Upstream(result(1, {"resultType": "input_required", "inputRequests": asked}))
        out = await settle(up.call, {"name": "t"}, yes)
        assert "error" in out and len(up.sent) == 1
