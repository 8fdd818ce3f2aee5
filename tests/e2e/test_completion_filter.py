"""Completion shows nothing hidden: a real ``mcp-guard run`` in front of the recording server in
``--completes`` mode, whose completion offers every prompt, resource and template name it has.
Values naming a hidden prompt, resource or template are dropped, a value that would make a hidden
URI of the template being completed is dropped, and a template no allow rule can match is neither
listed nor completed (it is unknown, and the refusal is audited)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures import RecordFile, recording_server_command, stdio_upstream, write_guard_config
from helpers_proxy import RawGuard, raw_guard

pytestmark = [pytest.mark.e2e]

POLICY = [{"id": "completion", "rules": [
    {"effect": "allow", "prompts": ["rec/open"]},
    {"effect": "allow", "resources": ["rec/note://*"]},
    {"effect": "deny", "resources": ["rec/note://hidden"]},
]}]


async def _complete(g: RawGuard, ref: dict[str, Any], name: str, value: str = "") -> dict[str, Any]:
    return await g.request("completion/complete", {"ref": ref, "argument": {"name": name, "value": value}})


async def test_completion_values_never_name_what_the_caller_cannot_see(tmp_path: Path) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command("--completes"), env=record.env())},
                                POLICY, audit={"path": str(tmp_path / "audit.jsonl")})
    async with raw_guard(config) as g:
        await g.initialize()
        templates = (await g.request("resources/templates/list", {}))["result"]["resourceTemplates"]
        assert [t["uriTemplate"] for t in templates] == ["note://{name}"]  # vault://{key}: no allow rule can match it
        assert [p["name"] for p in (await g.request("prompts/list", {}))["result"]["prompts"]] == ["rec_open"]
        assert [r["uri"] for r in (await g.request("resources/list", {}))["result"]["resources"]] == ["note://shared"]

        by_prompt = (await _complete(g, {"type": "ref/prompt", "name": "rec_open"}, "topic"))["result"]["completion"]
        assert by_prompt["values"] == ["open", "note://shared", "note://{name}", "shared", "hidden"]
        assert by_prompt["total"] == 5

        by_template = (await _complete(g, {"type": "ref/resource", "uri": "note://{name}"}, "name"))["result"]["completion"]
        assert by_template["values"] == ["open", "note://shared", "note://{name}", "shared"]  # note://hidden is denied
        assert (await _complete(g, {"type": "ref/resource", "uri": "note://{name}"}, "name", "h"))["result"]["completion"]["values"] == []

        hidden = await _complete(g, {"type": "ref/resource", "uri": "vault://{key}"}, "key")
        assert hidden["error"]["message"] == "Resource not found: vault://{key}", hidden
        unknown = await _complete(g, {"type": "ref/resource", "uri": "vault://{nothing}"}, "key")
        assert unknown["error"]["message"] == "Resource not found: vault://{nothing}", unknown
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r["decision"] == "unknown" and r.get("uri") == "vault://{key}" for r in audit)
    assert sum(1 for r in record.records() if r["method"] == "completion/complete") == 3  # the refused ones never went
