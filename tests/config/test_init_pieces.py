"""The pure parts of ``mcp-guard init``: host files in, a starting policy out (annotations are the
server's claims: only explicit true counts, and names that would be globs are never allowed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mcp_guard.errors import ConfigError
from mcp_guard.hostconfig import parse_host_config, rewritten, upstream_name
from mcp_guard.policy import Effect, load_sources
from mcp_guard.starter import classify, render_policy, render_tests, starting_tools


@pytest.mark.parametrize(("annotations", "effect"), [
    ({"readOnlyHint": True}, Effect.ALLOW),
    ({"readOnlyHint": True, "openWorldHint": True}, Effect.APPROVE),  # reads the web: a human decides
    ({"destructiveHint": True}, Effect.APPROVE),
    ({"readOnlyHint": True, "destructiveHint": True}, Effect.APPROVE),
    ({"readOnlyHint": "true"}, Effect.DENY),  # only a real true counts
    ({"readOnlyHint": False, "destructiveHint": False}, Effect.DENY),
    ({}, Effect.DENY),
    (None, Effect.DENY),
])
def test_starting_effects(annotations: object, effect: Effect) -> None:
    assert classify({"name": "t", "annotations": annotations})[0] is effect


def test_a_tool_named_like_a_glob_is_never_allowed() -> None:
    tools = starting_tools({"up": [{"name": "*", "annotations": {"readOnlyHint": True}},
                                   {"name": "read me", "annotations": {"readOnlyHint": True}},
                                   {"name": "ok", "annotations": {"readOnlyHint": True}}]})
    assert [(t.name, t.effect) for t in tools] == [("*", Effect.DENY), ("ok", Effect.ALLOW), ("read me", Effect.DENY)]
    policy = render_policy("up", tools, "test")
    assert '"up/*"' not in policy.split("# Denied")[0]


def test_rendered_policy_and_tests_load_and_agree() -> None:
    tools = starting_tools({"up": [
        {"name": "read", "annotations": {"readOnlyHint": True}, "description": "Reads.\n# not: yaml"},
        {"name": "wipe", "annotations": {"destructiveHint": True}, "description": 'He said "x": y'},
        {"name": "other"},
    ]})
    ps = load_sources([("p.yaml", render_policy("up", tools, "from `x`"))])
    cases = yaml.safe_load(render_tests("up", tools))["cases"]
    assert [(c["call"]["tool"], c["expect"]) for c in cases] == [("up/other", "deny"), ("up/read", "allow"), ("up/wipe", "approve")]
    assert len(ps.policies) == 1


def test_nothing_allowed_is_still_a_valid_policy() -> None:
    tools = starting_tools({"up": [{"name": "x"}]})
    assert load_sources([("p.yaml", render_policy("up", tools, "o"))]).policies[0].rules == ()


def test_host_files(tmp_path: Path) -> None:
    f = tmp_path / "proj" / ".vscode" / "mcp.json"
    text = json.dumps({"inputs": [], "servers": {
        "a.b c": {"type": "stdio", "command": "srv", "args": ["${workspaceFolder}/data"], "env": {"K": "v"}},
        "a-b-c": {"command": "srv2"},
        "web": {"type": "http", "url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": "Bearer x"}},
        "bad": {"command": "x", "args": "not a list"},
        "off": {"command": "x", "disabled": True},
    }})
    host = parse_host_config(text, f)
    assert host.key == "servers" and host.workspace == tmp_path / "proj"
    assert [s.name for s in host.servers] == ["a-b-c", "a-b-c-2", "web"]
    assert host.servers[0].upstream.args == (f"{tmp_path / 'proj'}/data",)
    assert host.servers[2].upstream.url and host.servers[2].upstream.headers == {"Authorization": "Bearer x"}
    assert sorted(w.split(":")[0] for w in host.skipped) == ["bad", "off"]
    out = json.loads(rewritten(host, ["/bin/mcp-guard"], tmp_path / "g.yaml"))
    assert sorted(out["servers"]) == ["bad", "mcp-guard", "off"] and out["inputs"] == []
    assert out["servers"]["mcp-guard"] == {"type": "stdio", "command": "/bin/mcp-guard", "args": ["run", "--config", str(tmp_path / "g.yaml")]}


@pytest.mark.parametrize("text", ["not json", "[]", '{"other": {}}', '{"mcpServers": []}'])
def test_not_a_host_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_host_config(text, tmp_path / "x.json")
    assert str(err.value).startswith(f"{tmp_path / 'x.json'}:1:1: ")


def test_upstream_names_are_unique_and_valid() -> None:
    taken: set[str] = set()
    for key in ["x" * 40, "x" * 40, "!!!", "ok"]:
        name = upstream_name(key, taken)
        assert name not in taken and 1 <= len(name) <= 32
        taken.add(name)
