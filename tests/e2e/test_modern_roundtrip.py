"""A 2026-07-28 host finishes a 2026-07-28 upstream's own ``input_required`` round trip, through
``run`` and ``serve``, with the mcp 2.x SDK's MCPServer as the upstream (``fixtures/asking_server``,
which seals its own state): the questions reach the host mediated, the retry carries the upstream's
state back inside the guard's sealed envelope, and the policy decides the retry again.  Beside it,
the attacks: a replayed, forged or altered state, one moved to another tool or arguments, and in
``serve`` one presented by another principal — each refused with one sentence, audited, and never
forwarded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fixtures import VENV_BIN, free_port, stdio_upstream, write_guard_config
from fixtures.serving import serving_in_process
from helpers_proxy import raw_guard

from mcp_guard.grants import generate_keypair, issue_grant, public_jwk
from mcp_guard.proxy.roundtrip import PREFIX, REFUSED

pytestmark = pytest.mark.e2e

ASKING = [str(VENV_BIN / "python"), str(Path(__file__).resolve().parents[1] / "fixtures" / "asking_server.py")]
FORM = {"elicitation": {"form": {}}}
DATE = {"action": "accept", "content": {"date": "May 1"}}


def meta(capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "modern-host", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": FORM if capabilities is None else capabilities}


def config_for(tmp: Path, policies: Any = None, **upstream: Any) -> Path:
    up = stdio_upstream(ASKING, protocol="modern", env={"RECORD_FILE": str(tmp / "rec.jsonl")}, **upstream)
    extra: dict[str, Any] = {"audit": {"path": str(tmp / "audit.jsonl")}}
    return write_guard_config(tmp, {"ask": up}, policies or [{"id": "all", "rules": [{"effect": "allow", "tools": ["ask/*"]}]}],
                              **extra)


def upstream_saw(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "rec.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def audit(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp / "audit.jsonl").read_text().splitlines()]


def answers(asked: dict[str, Any]) -> dict[str, Any]:
    return {key: DATE for key, q in asked["inputRequests"].items() if q["method"] == "elicitation/create"}


async def test_run_relays_the_questions_and_the_retry_finishes_the_call(tmp_path: Path) -> None:
    async with raw_guard(config_for(tmp_path), process=True) as guard:  # the real `mcp-guard run` process
        await guard.request("server/discover", {"_meta": meta()})
        first = await guard.request("tools/call", {"name": "ask_book", "arguments": {"city": "Oslo"}, "_meta": meta()})
        asked = first["result"]
        assert asked["resultType"] == "input_required", first
        assert [q["method"] for q in asked["inputRequests"].values()] == ["elicitation/create"]
        assert asked["requestState"].startswith(PREFIX)
        retry = {"name": "ask_book", "arguments": {"city": "Oslo"}, "requestState": asked["requestState"],
                 "inputResponses": answers(asked), "_meta": meta()}
        done = await guard.request("tools/call", retry)
        assert done["result"]["content"][0]["text"] == "booked Oslo on May 1", done
        replayed = await guard.request("tools/call", retry)
        assert replayed["error"]["code"] == -32602 and REFUSED in replayed["error"]["message"]
    saw = upstream_saw(tmp_path)
    assert [(s["requestState"], s["inputResponses"]) for s in saw] == [(False, []), (True, list(answers(asked)))]  # never the replay
    assert all(s["capabilities"] == FORM for s in saw)  # what the guard can relay for this host, nothing more
    decisions = [(r["decision"], r.get("reason", "")) for r in audit(tmp_path) if r.get("exposed") == "ask_book"]
    assert [d for d, _ in decisions] == ["allow", "allow", "deny"], decisions  # the retry was decided again
    assert "already used" in decisions[-1][1]


async def test_configured_roots_are_answered_by_the_guard_itself(tmp_path: Path) -> None:
    async with raw_guard(config_for(tmp_path, roots=["/srv/one"])) as guard:
        first = await guard.request("tools/call", {"name": "ask_plan", "arguments": {"city": "Oslo"}, "_meta": meta()})
        asked = first["result"]
        assert [q["method"] for q in asked["inputRequests"].values()] == ["elicitation/create"], asked  # roots never asked
        forged_roots = {key: {"roots": [{"uri": "file:///etc"}]} for key in ("ask_roots", "__main__:ask_roots")}
        done = await guard.request("tools/call", {"name": "ask_plan", "arguments": {"city": "Oslo"}, "_meta": meta(),
                                                  "requestState": asked["requestState"],
                                                  "inputResponses": {**answers(asked), **forged_roots}})
    assert done["result"]["content"][0]["text"] == "plan Oslo on May 1 in file:///srv/one", done


async def test_a_call_whose_every_question_the_guard_answers_never_bothers_the_host(tmp_path: Path) -> None:
    async with raw_guard(config_for(tmp_path, roots=["/srv/one", "/srv/two"])) as guard:
        out = await guard.request("tools/call", {"name": "ask_where", "arguments": {}, "_meta": meta({})})
    assert out["result"]["content"][0]["text"] == "roots: file:///srv/one file:///srv/two", out
    assert [s["requestState"] for s in upstream_saw(tmp_path)] == [False, True]


async def test_a_host_without_the_capability_is_not_asked(tmp_path: Path) -> None:
    async with raw_guard(config_for(tmp_path)) as guard:
        out = await guard.request("tools/call", {"name": "ask_book", "arguments": {"city": "Oslo"}, "_meta": meta({})})
    assert "resultType" not in out.get("result", {}) or out["result"].get("resultType") != "input_required", out
    assert not any(s["capabilities"] for s in upstream_saw(tmp_path))  # the upstream was told nothing can be asked


@pytest.mark.parametrize("tamper", ["forged", "altered", "other tool", "other arguments"])
async def test_a_tampered_or_moved_state_is_refused_audited_and_not_forwarded(tmp_path: Path, tamper: str) -> None:
    async with raw_guard(config_for(tmp_path)) as guard:
        asked = (await guard.request("tools/call", {"name": "ask_book", "arguments": {"city": "Oslo"}, "_meta": meta()}))["result"]
        state = asked["requestState"]
        name, args = "ask_book", {"city": "Oslo"}
        if tamper == "forged":
            state = PREFIX + "c2VhbGVkIGJ5IG1l"
        elif tamper == "altered":
            state = state[:-6] + ("AAAAAA" if not state.endswith("AAAAAA") else "BBBBBB")
        elif tamper == "other tool":
            name = "ask_plan"
        else:
            args = {"city": "Mordor"}
        out = await guard.request("tools/call", {"name": name, "arguments": args, "requestState": state,
                                                 "inputResponses": answers(asked), "_meta": meta()})
    assert out["error"] == {"code": -32602, "message": f"Invalid params: {REFUSED}"}, out
    assert len(upstream_saw(tmp_path)) == 1
    refused = [r for r in audit(tmp_path) if r["decision"] == "deny"]
    assert len(refused) == 1 and "mcp-guard refused the requestState" in refused[0]["reason"]


async def test_the_retry_is_decided_by_the_policy_again(tmp_path: Path) -> None:
    policies = [{"id": "metered", "rules": [{"effect": "allow", "tools": ["ask/*"]}],
                 "limits": [{"tools": ["ask/book"], "per_session": 1}]}]
    async with raw_guard(config_for(tmp_path, policies)) as guard:
        asked = (await guard.request("tools/call", {"name": "ask_book", "arguments": {"city": "Oslo"}, "_meta": meta()}))["result"]
        out = await guard.request("tools/call", {"name": "ask_book", "arguments": {"city": "Oslo"}, "_meta": meta(),
                                                 "requestState": asked["requestState"], "inputResponses": answers(asked)})
    assert out["result"]["isError"] is True, out  # the budget the first call spent is gone: the retry is refused
    assert len(upstream_saw(tmp_path)) == 1


def test_serve_finishes_the_round_trip_and_refuses_another_principals_retry(tmp_path: Path) -> None:
    key, pub = generate_keypair()
    (tmp_path / "idp.jwk").write_text(json.dumps(public_jwk(pub)))
    up = stdio_upstream(ASKING, protocol="modern", env={"RECORD_FILE": str(tmp_path / "rec.jsonl")})
    config = write_guard_config(tmp_path, {"ask": up}, [{"id": "all", "rules": [{"effect": "allow", "tools": ["ask/*"]}]}],
                                trust={"issuers": {"corp-idp": str(tmp_path / "idp.jwk")}},
                                audit={"path": str(tmp_path / "audit.jsonl")})
    alice, mallory = (issue_grant(key, "corp-idp", who, "agent", ["ask/*"]) for who in ("alice", "mallory"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"

    def call(token: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {**params, "_meta": meta()}}
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json", "Mcp-Method": "tools/call", "Mcp-Name": params["name"],
                   "MCP-Protocol-Version": "2026-07-28"}
        response = httpx2.post(url, content=json.dumps(body).encode(), headers=headers, timeout=60)
        text = response.text
        if text.startswith("event:") or text.startswith("data:") or "\ndata:" in text:
            text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
        out: dict[str, Any] = json.loads(text)
        return out

    with serving_in_process(config, port):
        book = {"name": "ask_book", "arguments": {"city": "Oslo"}}
        asked = call(alice, book)["result"]
        assert asked["resultType"] == "input_required" and asked["requestState"].startswith(PREFIX), asked
        retry = {**book, "requestState": asked["requestState"], "inputResponses": answers(asked)}
        stolen = call(mallory, retry)
        assert stolen["error"]["code"] == -32602, stolen
        done = call(alice, retry)
        assert done["result"]["content"][0]["text"] == "booked Oslo on May 1", done
        assert call(alice, retry)["error"]["code"] == -32602  # replayed
    assert [s["requestState"] for s in upstream_saw(tmp_path)] == [False, True]
    refusals = [r for r in audit(tmp_path) if r["decision"] == "deny"]
    assert len(refusals) == 2 and "another upstream, tool, arguments, caller" in refusals[0]["reason"]
