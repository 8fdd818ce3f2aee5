"""``serve`` and ``run`` answer the 2026-07-28 era as it requires, over real processes: removed
methods are unknown (HTTP 404), the ``_meta`` envelope and the routing headers are checked against
each other, an unsupported version lists the supported ones, and nothing refused reaches the
upstream.  Every refusal is audited.  Adversarial cases beside each: header smuggling (duplicate or
conflicting ``Mcp-Name``, look-alikes), a batch, a removed method that must not be forwarded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fixtures import recording_server_command, stdio_upstream, write_guard_config
from fixtures.serving import ServeSetup, serving
from helpers_proxy import raw_guard

pytestmark = pytest.mark.e2e

MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "era-test", "version": "1"}}
HEADERS_SERVER = Path(__file__).resolve().parents[1] / "fixtures" / "headers_server.py"
REMOVED = ["initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"]


class Served:
    def __init__(self, setup: ServeSetup) -> None:
        self.setup = setup
        self.token = setup.grant("alice", "agent", ["rec/*"])
        self.ids = iter(range(1, 10_000))

    def post(self, method: str, params: dict[str, Any] | None = None, *, meta: Any = META, name: str | None = None,
             extra: list[tuple[str, str]] | None = None, version: str | None = MODERN, body: Any = None) -> httpx2.Response:
        params = dict(params or {})
        if meta is not None:
            params["_meta"] = meta
        message = body if body is not None else {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params}
        headers = [("Authorization", f"Bearer {self.token}"), ("Accept", "application/json, text/event-stream"),
                   ("Content-Type", "application/json"), ("Mcp-Method", method)]
        if version is not None:
            headers.append(("MCP-Protocol-Version", version))
        if name is not None:
            headers.append(("Mcp-Name", name))
        headers += extra or []
        return httpx2.post(self.setup.url, content=json.dumps(message).encode(), headers=headers, timeout=30)

    def audit(self) -> list[dict[str, Any]]:
        path = self.setup.config.parent / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def upstream_saw(self) -> list[str]:
        return self.setup.record.methods()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    setup = ServeSetup(tmp_path_factory.mktemp("serve-era"))
    with serving(setup.config, setup.port):
        yield Served(setup)


def refused(answer: httpx2.Response, status: int, code: int) -> dict[str, Any]:
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert body["error"]["code"] == code, body
    return body


def test_a_2026_request_with_every_header_is_served(served: Served) -> None:
    answer = served.post("tools/call", {"name": "rec_echo", "arguments": {"text": "hi"}}, name="rec_echo")
    assert answer.status_code == 200 and answer.json()["result"]["resultType"] == "complete", answer.text


@pytest.mark.parametrize("method", REMOVED)
def test_removed_methods_answer_404_and_never_reach_the_upstream(served: Served, method: str) -> None:
    params = {"uri": "demo://x"} if method.startswith("resources/") else {"level": "info"} if method == "logging/setLevel" else {}
    before = served.upstream_saw()
    body = refused(served.post(method, params), 404, -32601)
    assert body["id"] is not None
    assert served.upstream_saw() == before
    assert any(r["method"] == method and "2026-07-28" in r["reason"] for r in served.audit())


def test_an_unknown_method_answers_404(served: Served) -> None:
    refused(served.post("tools/frobnicate"), 404, -32601)


def test_an_unsupported_version_lists_the_supported_ones(served: Served) -> None:
    meta = {**META, "io.modelcontextprotocol/protocolVersion": "v999.0.0"}
    body = refused(served.post("tools/list", meta=meta, version="v999.0.0"), 400, -32022)
    assert MODERN in body["error"]["data"]["supported"]


@pytest.mark.parametrize("meta", [None, {"io.modelcontextprotocol/clientCapabilities": {}},
                                  {"io.modelcontextprotocol/protocolVersion": MODERN}])
def test_an_incomplete_envelope_is_invalid_params(served: Served, meta: Any) -> None:
    refused(served.post("tools/list", meta=meta), 400, -32602)


def test_header_version_and_meta_version_must_agree(served: Served) -> None:
    refused(served.post("tools/list", version="2026-09-09"), 400, -32020)


@pytest.mark.parametrize("name", [None, "rec_delete_note", "REC_ECHO", "rеc_echo", "rec_echo\u200b"])
def test_a_missing_wrong_or_look_alike_mcp_name_never_runs_a_tool(served: Served, name: str | None) -> None:
    """The header names another tool, or one that only looks like it (Cyrillic е, zero-width space
    sent as Base64 so it survives HTTP): refused before any session, nothing reaches the upstream."""
    import base64

    if name is not None and not name.isascii():
        name = "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
    before = served.upstream_saw()
    refused(served.post("tools/call", {"name": "rec_echo", "arguments": {"text": "x"}}, name=name), 400, -32020)
    assert served.upstream_saw() == before


def test_a_duplicated_or_conflicting_mcp_name_is_refused(served: Served) -> None:
    before = served.upstream_saw()
    for extra in ([("Mcp-Name", "rec_echo")], [("mcp-name", "rec_delete_note")]):
        answer = served.post("tools/call", {"name": "rec_echo", "arguments": {"text": "x"}}, name="rec_echo", extra=extra)
        refused(answer, 400, -32020)
    assert served.upstream_saw() == before


def test_a_missing_mcp_method_is_refused(served: Served) -> None:
    message = {"jsonrpc": "2.0", "id": 99, "method": "tools/list", "params": {"_meta": META}}
    answer = httpx2.post(served.setup.url, json=message, timeout=30, headers={
        "Authorization": f"Bearer {served.token}", "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN})
    refused(answer, 400, -32020)


def test_a_batch_carrying_2026_meta_is_refused_whole(served: Served) -> None:
    one = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    before = served.upstream_saw()
    answer = served.post("tools/list", body=[one, {**one, "id": 2, "method": "ping"}])
    assert answer.status_code == 400, answer.text
    assert served.upstream_saw() == before


def test_a_missing_resource_keeps_its_uri_and_a_hidden_one_answers_the_same(served: Served) -> None:
    """alice's grant permits no resource: every URI is hidden, and answers exactly like one that
    does not exist, naming only the URI she sent."""
    for uri in ("demo://nothing-here", "file:///etc/passwd"):
        body = refused(served.post("resources/read", {"uri": uri}, name=uri), 400, -32602)
        assert body["error"] == {"code": -32602, "message": f"Resource not found: {uri}", "data": {"uri": uri}}


def test_a_handshake_era_session_is_untouched(served: Served) -> None:
    """A 2025-11-25 client (no 2026 header): initialize still opens a session."""
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    answer = served.post("initialize", init, meta=None, version=None)
    assert answer.status_code == 200 and "mcp-session-id" in answer.headers, answer.text


# --------------------------------------------------------------------------- the stdio face


async def test_run_answers_the_era_on_stdio(tmp_path: Path) -> None:
    """``run`` has no headers: the envelope, the version and the removed methods are judged on the
    body alone; a removed method is audited and never forwarded."""
    from fixtures import RecordFile

    record = RecordFile(tmp_path / "rec.jsonl")
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record.env())},
                                audit={"path": str(tmp_path / "audit.jsonl")})
    async with raw_guard(config) as guard:
        assert "result" in await guard.request("server/discover", {"_meta": META})
        for method in REMOVED:
            answer = await guard.request(method, {"uri": "demo://x", "_meta": META})
            assert answer["error"]["code"] == -32601, answer
        bad = await guard.request("tools/list", {"_meta": {**META, "io.modelcontextprotocol/protocolVersion": "v999.0.0"}})
        assert bad["error"]["code"] == -32022 and MODERN in bad["error"]["data"]["supported"], bad
        missing = await guard.request("tools/list", {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}})
        assert missing["error"]["code"] == -32602, missing
        no_meta = await guard.request("tools/list", {})  # the session speaks 2026-07-28: every request carries _meta
        assert no_meta["error"]["code"] == -32602, no_meta
        assert "result" in await guard.request("tools/list", {"_meta": META})
    assert not {"ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"} & set(record.methods())
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {r["method"] for r in audit if "2026-07-28" in (r.get("reason") or "")} >= set(REMOVED) | {"tools/list"}


async def test_a_tool_left_out_for_an_invalid_x_mcp_header_is_audited_as_such(tmp_path: Path) -> None:
    """The upstream lists ``smuggle`` with an invalid ``x-mcp-header``: the guard never lists nor
    calls it; a host naming it anyway is answered as for an unknown tool, and the audit record says
    why it was left out and which upstream tool it names."""
    import sys

    from fixtures import free_port, serve_http

    port = free_port()
    server = [sys.executable, str(HEADERS_SERVER), "--port", str(port)]
    with serve_http(server, port, log=tmp_path / "headers.log") as url:
        config = write_guard_config(tmp_path, {"hx": {"url": url, "protocol": "modern"}},
                                    [{"id": "all", "rules": [{"effect": "allow", "tools": ["*/*"]}]}],
                                    audit={"path": str(tmp_path / "audit.jsonl")})
        async with raw_guard(config) as guard:
            listed = await guard.request("tools/list", {"_meta": META})
            assert [t["name"] for t in listed["result"]["tools"]] == ["hx_routed"], listed
            called = await guard.request("tools/call", {"name": "hx_smuggle", "arguments": {"target": "x"}, "_meta": META})
            assert called["error"] == {"code": -32602, "message": "Unknown tool: hx_smuggle"}, called
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    record = next(r for r in audit if r.get("tool") == "hx_smuggle" or "hx_smuggle" in str(r.get("reason")))
    assert record["decision"] == "unknown" and record["resolves_to"] == "hx/smuggle", record
    assert "x-mcp-header" in record["reason"] and "Unknown tool: hx_smuggle" in record["reason"], record
