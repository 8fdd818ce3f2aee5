"""Complete mediation, fail closed: every request kind is decided, audited, or refused.

Real upstreams (``@modelcontextprotocol/server-everything`` for resources, resource templates,
prompts and completion; the recording fixture for what actually reached an upstream), real
``mcp-guard run`` (stdio) and ``mcp-guard serve`` (HTTP) processes, the SDK client as the host in
both protocol eras, and a raw line client for byte-level comparisons and what no SDK sends.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import (
    Mode,
    RecordFile,
    free_port,
    guarded_session,
    mcp_guard_bin,
    recording_server_command,
    requires_tools,
    stdio_upstream,
    tool_path,
    tools_env,
    write_guard_config,
)
from fixtures.serving import connect, serving_in_process
from helpers_proxy import raw_guard
from mcp.shared.exceptions import MCPError
from test_grants_e2e import _link_id

from mcp_guard.grants import generate_keypair, issue_grant, public_jwk

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-everything")]

STATIC = "demo://resource/static/document/"
ALLOWED_DOC = STATIC + "architecture.md"
HIDDEN_DOC = STATIC + "features.md"  # exists upstream, no rule allows it
MISSING_DOC = STATIC + "no-such-document.md"  # does not exist anywhere
TEXT_TEMPLATE = "demo://resource/dynamic/text/{resourceId}"
BLOB_TEMPLATE = "demo://resource/dynamic/blob/{resourceId}"

POLICY: list[dict[str, Any]] = [{"id": "mediation", "rules": [
    {"effect": "allow", "tools": ["rec/*"]},
    {"effect": "deny", "tools": ["rec/delete_note"]},
    {"effect": "allow", "resources": ["everything/*"], "when": {"uri": {"equals": ALLOWED_DOC}}},
    {"effect": "allow", "resources": ["everything/*"], "when": {"uri": {"regex": "demo://resource/dynamic/text/.*"}}},
    {"effect": "allow", "prompts": ["everything/simple-prompt", "everything/completable-prompt"]},
]}]

MODES: list[Mode] = ["legacy", "2026-07-28"]


def _config(tmp: Path, record: RecordFile, **extra: Any) -> Path:
    return write_guard_config(
        tmp,
        {"everything": stdio_upstream([str(tool_path("mcp-server-everything"))]),
         "rec": stdio_upstream(recording_server_command(), env=record.env())},
        POLICY,
        audit={"path": str(tmp / "audit.jsonl")},
        **extra,
    )


def _audit(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _refusal(exc: pytest.ExceptionInfo[MCPError]) -> tuple[int, str]:
    return exc.value.error.code, exc.value.error.message


# --------------------------------------------------------------------------- run (stdio), both eras


@pytest.mark.parametrize("mode", MODES)
async def test_only_what_a_rule_allows_is_listed_and_reachable(tmp_path: Path, mode: Mode) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    async with guarded_session(_config(tmp_path, record), mode=mode) as c:
        s = c.session
        assert [r.uri for r in (await s.list_resources()).resources] == [ALLOWED_DOC]
        # a template is listed when some resource rule of its upstream could apply (its URIs are judged on read)
        assert sorted(t.uri_template for t in (await s.list_resource_templates()).resource_templates) == [BLOB_TEMPLATE, TEXT_TEMPLATE]
        assert sorted(p.name for p in (await s.list_prompts()).prompts) == ["everything_completable-prompt", "everything_simple-prompt"]

        assert "Architecture" in (await s.read_resource(ALLOWED_DOC)).contents[0].text  # type: ignore[union-attr]
        assert (await s.read_resource("demo://resource/dynamic/text/7")).contents  # by its template
        assert (await s.get_prompt("everything_simple-prompt")).messages
        done = await s.complete({"type": "ref/prompt", "name": "everything_completable-prompt"}, {"name": "department", "value": "E"})
        assert "Engineering" in done.completion.values
        by_template = await s.complete({"type": "ref/resource", "uri": TEXT_TEMPLATE}, {"name": "resourceId", "value": "1"})
        assert by_template.completion.values == ["1"]

        for call in (lambda: s.read_resource(HIDDEN_DOC), lambda: s.read_resource("demo://resource/dynamic/blob/1"),
                     lambda: s.get_prompt("everything_args-prompt", {"city": "x", "state": "y"}),
                     lambda: s.complete({"type": "ref/prompt", "name": "everything_resource-prompt"}, {"name": "resourceType", "value": ""})):
            with pytest.raises(MCPError) as refused:
                await call()
            assert refused.value.error.code == -32602


@pytest.mark.parametrize("mode", MODES)
async def test_hidden_answers_exactly_like_unknown_and_both_are_audited(tmp_path: Path, mode: Mode) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    async with guarded_session(_config(tmp_path, record), mode=mode) as c:
        s = c.session
        pairs = [
            (lambda name: s.read_resource(name), HIDDEN_DOC, MISSING_DOC),
            (lambda name: s.get_prompt(name), "everything_args-prompt", "everything_no-such-prompt"),
            (lambda name: s.complete({"type": "ref/prompt", "name": name}, {"name": "x", "value": ""}), "everything_args-prompt", "everything_no-such-prompt"),
            (lambda name: c.call_tool(name, {}), "rec_delete_note", "rec_no_such_tool"),
        ]
        for call, hidden, unknown in pairs:
            with pytest.raises(MCPError) as a:
                await call(hidden)
            with pytest.raises(MCPError) as b:
                await call(unknown)
            code_a, text_a = _refusal(a)
            code_b, text_b = _refusal(b)
            assert (code_a, text_a.replace(hidden, "NAME")) == (code_b, text_b.replace(unknown, "NAME"))
            assert code_a == -32602 and hidden in text_a
    unknown = [r for r in _audit(tmp_path) if r["decision"] == "unknown"]
    named = {(r["kind"], r.get("uri") or r.get("prompt") or r.get("tool")) for r in unknown}
    assert {("resource", HIDDEN_DOC), ("resource", MISSING_DOC), ("prompt", "everything_args-prompt"), ("prompt", "everything_no-such-prompt"),
            ("tool", "rec_delete_note"), ("tool", "rec_no_such_tool")} <= named
    # a hidden name's record also says what it names (the caller was told only "unknown")
    resolved = {(r.get("tool") or r.get("prompt")): r.get("resolves_to") for r in unknown if r["kind"] in ("tool", "prompt")}
    assert resolved["rec_delete_note"] == "rec/delete_note" and resolved["everything_args-prompt"] == "everything/args-prompt"
    assert resolved["rec_no_such_tool"] is None and resolved["everything_no-such-prompt"] is None
    assert record.calls() == []


async def test_hidden_is_byte_for_byte_unknown_on_the_wire(tmp_path: Path) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    async with raw_guard(_config(tmp_path, record)) as g:
        await g.initialize()
        for method, key, hidden, unknown in (("resources/read", "uri", HIDDEN_DOC, MISSING_DOC),
                                             ("prompts/get", "name", "everything_args-prompt", "everything_no-such-prompt"),
                                             ("tools/call", "name", "rec_delete_note", "rec_nope")):
            await g.request(method, {key: hidden}, rid=1)
            first = g.lines[-1]
            await g.request(method, {key: unknown}, rid=1)
            second = g.lines[-1]
            assert first.replace(hidden.encode(), b"X") == second.replace(unknown.encode(), b"X"), (first, second)


async def test_unknown_methods_are_refused_and_never_reach_the_upstream(tmp_path: Path) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record.env())}, POLICY,
                                audit={"path": str(tmp_path / "audit.jsonl")})
    async with raw_guard(config) as g:
        await g.initialize()
        for method in ("tasks/list", "tasks/get", "TOOLS/CALL", "Tools/List", "rec/anything", "notifications/x"):
            answer = await g.request(method, {"name": "rec_echo", "arguments": {"text": "x"}})
            assert answer["error"]["code"] == -32601 and answer["error"]["message"].startswith("Method not found"), answer
        # invalid params are -32602 sentences, never an internal error
        for method, params in (("prompts/get", [1, 2]), ("completion/complete", "x"), ("resources/read", {"uri": 3}),
                               ("completion/complete", {"ref": {"type": "ref/other"}, "argument": {"name": "a"}}),
                               ("tools/list", {"cursor": "not-ours"})):
            message = {"jsonrpc": "2.0", "id": 77, "method": method, "params": params}
            await g.send(message)
            answer = await g.answer(77)
            assert answer["error"]["code"] == -32602 and answer["error"]["message"].startswith("Invalid params"), answer
        # a malformed notification is dropped without an answer; the guard goes on
        await g.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"a": 1}}})
        await g.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": [1]}})
        assert (await g.request("ping", rid="after"))["result"] == {}
        assert not [m for m in g.others if "id" in m and "method" not in m]
        assert "error" not in await g.request("tools/call", {"name": "rec_echo", "arguments": {"text": "still here"}})
    methods = record.methods()
    assert not {"tasks/list", "tasks/get", "TOOLS/CALL", "Tools/List", "rec/anything", "notifications/x"} & set(methods)
    assert record.calls() == [("echo", {"text": "still here"})]
    refused = [r for r in _audit(tmp_path) if r["decision"] == "unknown" and r.get("kind") is None]
    assert {r["method"] for r in refused} >= {"tasks/list", "TOOLS/CALL"}


@requires_tools("mcp-server-filesystem")
@pytest.mark.parametrize("mode", MODES)
async def test_a_symlink_out_of_the_allowed_root_is_refused_before_the_upstream(tmp_path: Path, mode: Mode) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.txt").write_text("fine")
    (tmp_path / "secret.txt").write_text("s3cret")
    (allowed / "link.txt").symlink_to(tmp_path / "secret.txt")
    config = write_guard_config(
        tmp_path, {"fs": stdio_upstream([str(tool_path("mcp-server-filesystem")), str(tmp_path)], resolve=True, workdir=str(allowed))},
        [{"id": "fs", "rules": [{"effect": "allow", "tools": ["fs/read_text_file"], "when": {"args.path": {"under": str(allowed)}}}]}],
        audit={"path": str(tmp_path / "audit.jsonl")})
    async with guarded_session(config, mode=mode) as c:
        ok = await c.call_tool("fs_read_text_file", {"path": str(allowed / "ok.txt")})
        assert not ok.is_error and ok.content[0].text == "fine"  # type: ignore[union-attr]
        relative = await c.call_tool("fs_read_text_file", {"path": "ok.txt"})  # judged against the workdir
        assert not relative.is_error or "mcp-guard" not in relative.content[0].text  # type: ignore[union-attr]
        for path in (str(allowed / "link.txt"), "link.txt"):
            refused = await c.call_tool("fs_read_text_file", {"path": path})
            assert refused.is_error and refused.content[0].text.startswith("mcp-guard denied fs/read_text_file"), refused
            assert "s3cret" not in refused.content[0].text  # type: ignore[union-attr]
    assert [r["decision"] for r in _audit(tmp_path)] == ["allow", "allow", "deny", "deny"]


# --------------------------------------------------------------------------- serve (HTTP): a revoked chain gets nothing


class _Served:
    def __init__(self, tmp: Path) -> None:
        self.key, pub = generate_keypair()
        (tmp / "idp.jwk").write_text(json.dumps(public_jwk(pub)))
        self.tmp = tmp
        self.record = RecordFile(tmp / "rec.jsonl")
        self.config = _config(tmp, self.record, trust={"issuers": {"corp-idp": str(tmp / "idp.jwk")}},
                              state={"url": f"sqlite:///{tmp / 'state.db'}"})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def grant(self) -> str:
        return issue_grant(self.key, "corp-idp", "alice@example.com", "planner", ["rec/*"])  # type: ignore[arg-type]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[_Served]:
    setup = _Served(tmp_path)
    with serving_in_process(setup.config, setup.port):
        yield setup


@pytest.mark.parametrize("mode", MODES)
async def test_a_revoked_chain_gets_nothing_on_any_request_kind(served: _Served, mode: Mode) -> None:
    token = served.grant()
    async with connect(served.url, token, mode) as c:
        s = c.session
        assert [t.name for t in (await c.list_tools()).tools]
        assert not (await c.call_tool("rec_echo", {"text": "before"})).is_error
        revoked = await asyncio.to_thread(
            subprocess.run, [str(mcp_guard_bin()), "grant", "revoke", "--config", str(served.config), "--", _link_id(token)],
            capture_output=True, text=True, timeout=30, env=tools_env())
        assert revoked.returncode == 0, revoked.stderr
        before = len(served.record.records())
        for call in (c.list_tools, s.list_resources, s.list_resource_templates, s.list_prompts,
                     lambda: s.read_resource(ALLOWED_DOC), lambda: s.get_prompt("everything_simple-prompt"),
                     lambda: s.complete({"type": "ref/prompt", "name": "everything_completable-prompt"}, {"name": "department", "value": ""})):
            with pytest.raises(MCPError) as refused:
                await call()
            assert "revoked" in refused.value.error.message or refused.value.error.code == -32602, refused.value.error
        answer = await c.call_tool("rec_echo", {"text": "after"})
        assert answer.is_error and "revoked" in answer.content[0].text  # type: ignore[union-attr]
    assert len(served.record.records()) == before
    assert [args for _, args in served.record.calls()] == [{"text": "before"}]
