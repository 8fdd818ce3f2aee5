"""Changing a policy safely, against the reference filesystem server and real audit logs:
``diff``, ``replay``, ``mode: shadow``, sibling-path warnings in ``check``, the report's headline
and its diff view.

Every test pins the real server (so guard.lock holds its input schemas and annotations), runs a
real guarded session with the ``mcp`` SDK client, and then drives the ``mcp-guard`` commands as a
user would, as subprocesses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import yaml
from fixtures import (
    guarded_session,
    mcp_guard_bin,
    real_mcp_guard_bin,
    requires_tools,
    tool_path,
    tools_env,
    write_guard_config,
    write_policies,
)

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-filesystem")]

OLD: list[dict[str, Any]] = [{
    "id": "fs-team",
    "rules": [
        {"id": "read", "effect": "allow",
         "tools": ["fs/read_text_file", "fs/read_multiple_files", "fs/read_file", "fs/list_directory", "fs/search_files",
                   "fs/directory_tree", "fs/get_file_info", "fs/list_allowed_directories"]},
        {"id": "write", "effect": "approve", "tools": ["fs/write_file"]},
    ],
}]


def new_policies(ws: Path) -> list[dict[str, Any]]:
    """read_text_file confined to ws/sub, write_file allowed outright, list_directory dropped, and a
    new subject (ops) that may move files."""
    return [
        {"id": "fs-team", "rules": [
            {"id": "read", "effect": "allow", "tools": ["fs/read_multiple_files", "fs/read_file", "fs/search_files",
                                                        "fs/directory_tree", "fs/get_file_info", "fs/list_allowed_directories"]},
            {"id": "read-sub", "effect": "allow", "tools": ["fs/read_text_file"], "when": {"args.path": {"under": str(ws / "sub")}}},
            {"id": "write", "effect": "allow", "tools": ["fs/write_file"]},
        ]},
        {"id": "ops", "subjects": {"users": ["*@ops.example.com"]}, "rules": [{"effect": "allow", "tools": ["fs/move_file"]}]},
    ]


def mcp_guard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = real_mcp_guard_bin() if args[:1] == ("init",) else mcp_guard_bin()  # init writes its own path into host files
    return subprocess.run([str(exe), *args], cwd=cwd, env=tools_env(), capture_output=True, text=True, timeout=120)


def guard_dir(tmp_path: Path, policies: list[dict[str, Any]], *, include_args: bool = False) -> tuple[Path, Path]:
    """A pinned guard.yaml in front of server-filesystem serving ``tmp_path/ws``; returns (guard.yaml, ws)."""
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True, exist_ok=True)
    (ws / "a.md").write_text("top\n")
    (ws / "sub" / "b.md").write_text("sub\n")
    config = write_guard_config(tmp_path, {"fs": {"command": str(tool_path("mcp-server-filesystem")), "args": [str(ws)]}},
                                policies, identity={"user": "alice@example.com"}, pinning="enforce",
                                audit={"path": "./audit.jsonl", "include_args": include_args})
    pinned = mcp_guard("pin", "--config", str(config), cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr
    return config, ws


async def _approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"approve": True})


async def use(config: Path, ws: Path) -> None:
    """Two agents at work: the audit log they leave is what diff and replay read."""
    planner = types.Implementation(name="planner", version="1")
    async with guarded_session(config, client_info=planner, elicitation_callback=_approve) as client:
        assert not (await client.call_tool("fs_read_text_file", {"path": str(ws / "a.md")})).is_error
        assert not (await client.call_tool("fs_read_text_file", {"path": str(ws / "sub" / "b.md")})).is_error
        assert not (await client.call_tool("fs_list_directory", {"path": str(ws)})).is_error
        assert not (await client.call_tool("fs_write_file", {"path": str(ws / "c.md"), "content": "x"})).is_error
    coder = types.Implementation(name="coder", version="1")
    async with guarded_session(config, client_info=coder) as client:
        assert not (await client.call_tool("fs_read_multiple_files", {"paths": [str(ws / "a.md")]})).is_error


async def test_diff_gates_widening_over_the_pinned_catalogue_and_the_audit_log(tmp_path: Path) -> None:
    config, ws = guard_dir(tmp_path, OLD)
    await use(config, ws)
    new = write_policies(tmp_path / "new", new_policies(ws), name="fs")
    out = mcp_guard("diff", "policies", str(new), "--config", str(config), cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr  # it widens: the CI gate fails
    assert "widening change" in out.stderr and "--allow-widening" in out.stderr
    lines = out.stdout.splitlines()
    agents = "user:alice@example.com agent:planner"
    assert any(line.startswith("widened") and "fs/write_file" in line and agents in line and "approve -> allow" in line
               for line in lines), out.stdout
    assert any(line.startswith("widened") and "fs/move_file" in line and "user:x@ops.example.com" in line for line in lines)
    assert any(line.startswith("narrowed") and "fs/list_directory" in line and "allow -> deny" in line for line in lines)
    assert any(line.startswith("now conditional") and "fs/read_text_file" in line
               and f"args.path must be under {ws / 'sub'}" in line for line in lines)
    # only what changes is printed: an untouched permission and a tool nobody may use stay quiet
    assert "fs/get_file_info" not in out.stdout and "fs/edit_file" not in out.stdout
    # widenings come first, so a reviewer reads them before anything else
    kinds = [line.split()[0] for line in lines[1:-1]]
    assert kinds == sorted(kinds, key=lambda k: k != "widened")

    js = mcp_guard("diff", "policies", str(new), "--config", str(config), "--json", "--allow-widening", cwd=tmp_path)
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["widening"] == data["counts"]["widened"] >= 3
    assert data["targets"] >= 14  # every pinned tool of the server, not only those the policies name
    principals = {tuple(c["principal"]) for c in data["changes"]}
    assert ("user:alice@example.com", "agent:coder") in principals  # from the audit log
    write = next(c for c in data["changes"] if c["target"] == "fs/write_file" and c["principal"][-1] == "agent:coder")
    assert write["old"]["effect"] == "approve" and write["new"] == {"effect": "allow", "conditional": False,
                                                                       "conditions": [], "rules": ["fs-team#write"]}

    same = mcp_guard("diff", "policies", "policies", "--config", str(config), cwd=tmp_path)
    assert same.returncode == 0 and "no change" in same.stdout
    narrower = write_policies(tmp_path / "narrower", [OLD[0] | {"rules": OLD[0]["rules"][:1]}], name="fs")
    only_narrows = mcp_guard("diff", "policies", str(narrower), "--config", str(config), cwd=tmp_path)
    assert only_narrows.returncode == 0, only_narrows.stdout  # narrowing alone passes the gate
    assert "narrowed" in only_narrows.stdout and "widened" not in only_narrows.stdout


async def test_diff_refuses_a_broken_policy_and_a_tampered_log(tmp_path: Path) -> None:
    config, ws = guard_dir(tmp_path, OLD)
    await use(config, ws)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npolicies:\n  - id: x\n    rules:\n      - effect: alow\n        tools: [fs/read_file]\n")
    out = mcp_guard("diff", "policies", str(bad), cwd=tmp_path)
    assert out.returncode == 1 and "bad.yaml:5:" in out.stderr and "unknown effect `alow`" in out.stderr
    assert "Traceback" not in out.stderr
    log = tmp_path / "audit.jsonl"
    records = log.read_text().splitlines()
    first = json.loads(records[0])
    first["decision"] = "deny"
    log.write_text("\n".join([json.dumps(first), *records[1:]]) + "\n")
    tampered = mcp_guard("replay", "--audit", str(log), "--policies", "policies", cwd=tmp_path)
    assert tampered.returncode != 0 and "BROKEN" in tampered.stderr and "Traceback" not in tampered.stderr


async def test_replay_lists_changed_decisions_and_those_that_depend_on_arguments(tmp_path: Path) -> None:
    config, ws = guard_dir(tmp_path, OLD)  # audit.include_args: false (the default)
    await use(config, ws)
    new = write_policies(tmp_path / "new", new_policies(ws), name="fs")
    out = mcp_guard("replay", "--audit", "audit.jsonl", "--policies", str(new), "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "fs/list_directory" in text and "allow -> deny (narrowed)" in text
    assert "fs/write_file" in text and "approved -> allow (widened)" in text
    # the arguments were not kept: read_text_file's new decision depends on them, so it is listed as such
    depends = [line for line in text.splitlines() if "fs/read_text_file" in line]
    assert len(depends) == 2 and all("depends on arguments" in line for line in depends)
    assert "audit.include_args: true" in text
    assert "fs/read_multiple_files" not in text  # unchanged under the new policies

    # with the arguments kept, the same requests are re-decided exactly
    kept = tmp_path / "kept"
    config2, ws2 = guard_dir(kept, OLD, include_args=True)
    await use(config2, ws2)
    new2 = write_policies(kept / "new", new_policies(ws2), name="fs")
    js = mcp_guard("replay", "--audit", "audit.jsonl", "--policies", str(new2), "--config", str(config2), "--json", cwd=kept)
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    changed = {(c["target"], c["recorded"], c["new"], c["status"]) for c in data["changed"]}
    assert ("fs/read_text_file", "allow", "deny", "narrowed") in changed  # ws/a.md is outside ws/sub
    assert not any(c["status"] == "depends on arguments" for c in data["changed"])
    reads = [c for c in data["changed"] if c["target"] == "fs/read_text_file"]
    assert len(reads) == 1  # ws/sub/b.md is still allowed: not listed
    assert data["replayed"] == 5


async def test_a_shadow_policy_is_audited_on_real_traffic_and_never_enforced(tmp_path: Path) -> None:
    trial = {"id": "trial", "mode": "shadow", "rules": [
        {"id": "no-writes", "effect": "deny", "tools": ["fs/write_file"], "reason": "Writes are being retired"},
        {"id": "sub-only", "effect": "deny", "tools": ["fs/read_text_file"], "when": {"args.path": {"glob": "*/ws/a.md"}}},
    ]}
    allow = [{"id": "live", "rules": [{"effect": "allow", "tools": ["fs/read_text_file", "fs/write_file"]}]}]
    config, ws = guard_dir(tmp_path, [*allow, trial])
    async with guarded_session(config) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"fs_read_text_file", "fs_write_file"}  # the shadow policy hides nothing
        wrote = await client.call_tool("fs_write_file", {"path": str(ws / "new.md"), "content": "x"})
        assert not wrote.is_error  # would be denied: never enforced
        assert not (await client.call_tool("fs_read_text_file", {"path": str(ws / "a.md")})).is_error
        assert not (await client.call_tool("fs_read_text_file", {"path": str(ws / "sub" / "b.md")})).is_error
    assert (ws / "new.md").read_text() == "x"
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    got = [(r["tool"], r["decision"], r["shadow_decision"], r["shadow_rule_ids"]) for r in records]
    assert got == [("write_file", "allow", "deny", ["trial#no-writes"]),
                   ("read_text_file", "allow", "deny", ["trial#sub-only"]),
                   ("read_text_file", "allow", "allow", ["live#1"])]
    verified = mcp_guard("audit", "verify", str(tmp_path / "audit.jsonl"), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # without shadow policies the audit record carries no shadow fields at all
    plain, ws2 = guard_dir(tmp_path / "plain", allow)
    async with guarded_session(plain) as client:
        assert not (await client.call_tool("fs_read_text_file", {"path": str(ws2 / "a.md")})).is_error
    (rec,) = [json.loads(line) for line in (tmp_path / "plain" / "audit.jsonl").read_text().splitlines()]
    assert "shadow_decision" not in rec


async def test_check_warns_about_sibling_tools_that_take_paths(tmp_path: Path) -> None:
    """The case as a new user meets it: the starting policy allows every reading tool, then one
    rule narrows read_text_file; read_multiple_files still reads /etc/passwd."""
    start = [{"id": "fs-start", "rules": [
        {"id": "read", "effect": "allow", "tools": ["fs/read_text_file", "fs/read_multiple_files", "fs/read_file",
                                                    "fs/search_files", "fs/directory_tree", "fs/list_allowed_directories"]}]}]
    config, ws = guard_dir(tmp_path, start)
    narrowed = [{"id": "fs-start", "rules": [
        {"id": "read", "effect": "allow", "tools": ["fs/read_multiple_files", "fs/read_file", "fs/search_files",
                                                    "fs/directory_tree", "fs/list_allowed_directories"]},
        {"id": "sub", "effect": "allow", "tools": ["fs/read_text_file"], "when": {"args.path": {"under": str(ws / "sub")}}}]}]
    write_policies(tmp_path / "policies", narrowed)
    out = mcp_guard("check", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr  # a warning, not an error
    (warning,) = [line for line in out.stderr.splitlines() if "sibling tools" in line]
    assert warning.startswith("policies/test.yaml:") and ": warning: rule fs-start#sub constrains args.path of fs/read_text_file" in warning
    for sibling in ("fs/read_multiple_files", "fs/read_file", "fs/search_files", "fs/directory_tree"):
        assert f"{sibling} (fs-start#read)" in warning
    assert "list_allowed_directories" not in warning  # it takes no path
    js = mcp_guard("check", "--config", str(config), "--json", cwd=tmp_path)
    data = json.loads(js.stdout)
    assert js.returncode == 0 and data["ok"] is True and data["errors"] == 0
    assert [p["severity"] for p in data["problems"] if "sibling" in p["message"]] == ["warning"]

    # the fix the warning asks for silences it; a list of paths needs its [*] form
    fixed = [{"id": "fs-start", "rules": [
        {"id": "one", "effect": "allow", "tools": ["fs/read_text_file", "fs/read_file", "fs/search_files", "fs/directory_tree"],
         "when": {"args.path": {"under": str(ws / "sub")}}},
        {"id": "many", "effect": "allow", "tools": ["fs/read_multiple_files"], "when": {"args.paths[*]": {"under": str(ws / "sub")}}}]}]
    write_policies(tmp_path / "policies", fixed)
    out = mcp_guard("check", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0 and "sibling" not in out.stderr, out.stderr
    async with guarded_session(config) as client:
        refused = await client.call_tool("fs_read_multiple_files", {"paths": ["/etc/passwd"]})
        assert refused.is_error and "mcp-guard denied fs/read_multiple_files" in refused.content[0].text  # type: ignore[union-attr]

    # an unconditional allow of the same tool elsewhere makes the condition narrow nothing
    write_policies(tmp_path / "policies", [*fixed, {"id": "other", "rules": [{"effect": "allow", "tools": ["fs/read_text_file"]}]}],)
    out = mcp_guard("check", "--config", str(config), cwd=tmp_path)
    assert "allow rules add up, so this condition narrows nothing" in out.stderr and "fs/read_text_file (other#1)" in out.stderr


async def test_report_headline_risky_first_and_the_diff_view(tmp_path: Path) -> None:
    policies = [{"id": "fs-team", "rules": [
        {"effect": "allow", "tools": ["fs/read_text_file", "fs/list_directory", "fs/get_file_info"]},
        {"effect": "approve", "tools": ["fs/write_file", "fs/move_file", "fs/create_directory"]}]}]
    config, ws = guard_dir(tmp_path, policies)
    async with guarded_session(config, client_info=types.Implementation(name="planner", version="1")) as client:
        assert not (await client.call_tool("fs_read_text_file", {"path": str(ws / "a.md")})).is_error
    out = mcp_guard("report", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "least privilege: used 1 of 6 allowed tools; 5 never used, 3 of them risky" in text
    never = text[text.index("never used, though the policies allow it (risky first):"):].splitlines()[1:6]
    assert [line.split()[0] for line in never] == ["fs/move_file", "fs/write_file", "fs/create_directory",
                                                   "fs/get_file_info", "fs/list_directory"]
    assert never[0].split()[1:] == ["destructive,", "writes"] and never[2].split()[1:] == ["writes"]

    js = json.loads(mcp_guard("report", "--config", str(config), "--json", cwd=tmp_path).stdout)
    head = js["subjects"][0]["least_privilege"]
    assert (head["used"], head["allowed"], head["risky_unused"]) == (1, 6, 3)

    old = write_policies(tmp_path / "old", [{"id": "fs-team", "rules": [
        {"effect": "allow", "tools": ["fs/read_text_file", "fs/list_directory", "fs/get_file_info", "fs/write_file"]}]}], name="fs")
    page = tmp_path / "report.html"
    out = mcp_guard("report", "--config", str(config), "--html", str(page), "--against", str(old), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    assert f"Changes from {old}" in html and "least privilege: used 1 of 6" in html
    assert "<td>widened</td><td><code>fs/move_file</code>" in html  # deny -> approve
    assert "<td>narrowed</td><td><code>fs/write_file</code>" in html  # allow -> approve
    changes = json.loads(out.stdout)["changes_from"]["changes"]
    assert {(c["change"], c["target"]) for c in changes} >= {("widened", "fs/move_file"), ("narrowed", "fs/write_file")}


def test_starting_policy_from_init_has_when_skeletons_for_path_tools(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    done = mcp_guard("init", "--out", "guard", "--", str(tool_path("mcp-server-filesystem")), "./ws", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    text = (tmp_path / "guard/policies/filesystem.yaml").read_text()
    root = json.dumps(str((tmp_path / "ws").resolve()))
    assert f"#   args.path: {{under: {root}}}" in text
    assert f"#   args.paths[*]: {{under: {root}}}" in text
    # uncommenting every skeleton gives a valid policy that confines every path-taking tool
    uncommented = text.replace("        # when:", "        when:").replace("        #   args.", "          args.")
    (tmp_path / "guard/policies/filesystem.yaml").write_text(uncommented)
    rules = yaml.safe_load(uncommented)["policies"][0]["rules"]
    assert all("when" in r for r in rules if any(t.endswith(("read_text_file", "read_multiple_files", "move_file")) for t in r["tools"]))
    out = mcp_guard("check", "--config", "guard/guard.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "sibling" not in out.stderr, out.stderr
    guard_yaml = (tmp_path / "guard/guard.yaml").read_text()
    assert "  grant: ${MCP_GUARD_GRANT:-}" in guard_yaml
    assert "cwd: .." in guard_yaml  # relative to guard.yaml: the folder can be committed


async def test_init_rewrites_a_vscode_project_file_portably_and_passes_its_inputs(tmp_path: Path) -> None:
    """The rewritten .vscode/mcp.json names nothing outside the project (it is committed), and a
    VS Code ``${input:token}`` reaches the server through the guard instead of being copied into
    guard.yaml, where nothing would ever fill it in."""
    from fixtures import PYTHON, RECORDING_SERVER, stdio_session

    project = tmp_path / "project"
    (project / ".vscode").mkdir(parents=True)
    (project / "ws").mkdir()
    inputs = [{"type": "promptString", "id": "api-token", "description": "API token", "password": True}]
    (project / ".vscode" / "mcp.json").write_text(json.dumps({"inputs": inputs, "servers": {
        "notes": {"type": "stdio", "command": PYTHON, "args": [str(RECORDING_SERVER)], "env": {"API_TOKEN": "${input:api-token}"}},
        "files": {"type": "stdio", "command": str(tool_path("mcp-server-filesystem")), "args": ["${workspaceFolder}/ws"]},
    }}))
    done = mcp_guard("init", "--from-host-config", ".vscode/mcp.json", "--out", ".mcp-guard", "--rewrite-host-config", cwd=project)
    assert done.returncode == 0, done.stderr + done.stdout
    host = json.loads((project / ".vscode" / "mcp.json").read_text())
    assert host["inputs"] == inputs  # the host still asks for the value
    entry = host["servers"]["mcp-guard"]
    assert entry == {"type": "stdio", "command": "mcp-guard", "args": ["run", "--config", "${workspaceFolder}/.mcp-guard/guard.yaml"],
                     "env": {"MCP_GUARD_INPUT_API_TOKEN": "${input:api-token}"}}
    assert str(tmp_path) not in (project / ".vscode" / "mcp.json").read_text()
    guard_yaml = (project / ".mcp-guard" / "guard.yaml").read_text()
    assert "${input:" not in guard_yaml and "API_TOKEN: ${MCP_GUARD_INPUT_API_TOKEN}" in guard_yaml
    assert "  grant: ${MCP_GUARD_GRANT:-}" in guard_yaml
    write_policies(project / ".mcp-guard" / "policies", [{"id": "env", "rules": [{"effect": "allow", "tools": ["notes/getenv"]}]}],
                   name="env")

    # launch what VS Code would: its variables filled in, the input in the entry's env, from the project
    argv = [entry["command"], *(a.replace("${workspaceFolder}", str(project)) for a in entry["args"])]
    async with stdio_session(argv, cwd=project, env=tools_env({"MCP_GUARD_INPUT_API_TOKEN": "s3cret"})) as client:
        got = await client.call_tool("notes_getenv", {"name": "API_TOKEN"})
        assert not got.is_error and "s3cret" in got.content[0].text  # type: ignore[union-attr]
        assert "files_read_text_file" in {t.name for t in (await client.list_tools()).tools}

    # a grant set later is no longer ignored: the guard refuses to start without trust for it
    log = tmp_path / "guard.log"
    with pytest.raises(Exception):  # noqa: B017 - the guard exits; the SDK reports the closed stream its own way
        async with stdio_session(argv, cwd=project, stderr=log,
                                 env=tools_env({"MCP_GUARD_INPUT_API_TOKEN": "x", "MCP_GUARD_GRANT": "e30.e30.e30"})) as client:
            await client.list_tools()
    assert "grant" in log.read_text(), log.read_text()


def test_init_rewrites_a_claude_code_project_file_relative_to_the_project(tmp_path: Path) -> None:
    (tmp_path / ".mcp.json").write_text(json.dumps({"mcpServers": {
        "files": {"command": str(tool_path("mcp-server-filesystem")), "args": ["./ws"]}}}))
    (tmp_path / "ws").mkdir()
    done = mcp_guard("init", "--from-host-config", ".mcp.json", "--out", ".mcp-guard", "--rewrite-host-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    entry = json.loads((tmp_path / ".mcp.json").read_text())["mcpServers"]["mcp-guard"]
    assert entry == {"command": "mcp-guard", "args": ["run", "--config", "./.mcp-guard/guard.yaml"]}
    assert load_config_cwd(tmp_path / ".mcp-guard" / "guard.yaml") == str(tmp_path)


def load_config_cwd(path: Path) -> str | None:
    from mcp_guard.config import load_config

    return load_config(path).upstreams["files"].cwd


@requires_tools("mcp-server-everything")
async def test_diff_and_replay_cover_resources_and_prompts(tmp_path: Path) -> None:
    """Resources and prompts are decided like tools: a real server's resource reads and prompt
    gets, audited, then compared and replayed under a version that moves them."""
    doc = "demo://resource/static/document/architecture.md"
    old = [{"id": "docs", "rules": [
        {"effect": "allow", "resources": ["everything/demo://resource/static/*"]},
        {"effect": "allow", "prompts": ["everything/simple-prompt"]}]}]
    config = write_guard_config(tmp_path, {"everything": {"command": str(tool_path("mcp-server-everything"))}}, old,
                                identity={"user": "alice@example.com"}, audit={"path": "./audit.jsonl"})
    async with guarded_session(config, client_info=types.Implementation(name="reader", version="1")) as client:
        assert (await client.session.read_resource(doc)).contents
        assert (await client.session.get_prompt("everything_simple-prompt")).messages
    new = write_policies(tmp_path / "new", [{"id": "docs", "rules": [
        {"effect": "approve", "resources": ["everything/demo://resource/static/*"]},
        {"effect": "allow", "prompts": ["everything/simple-prompt", "everything/args-prompt"]}]}], name="docs")
    out = mcp_guard("diff", "policies", str(new), "--config", str(config), "--json", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # args-prompt widens
    changes = {(c["kind"], c["target"], c["change"]) for c in json.loads(out.stdout)["changes"]
               if c["principal"] == ["user:alice@example.com", "agent:reader"]}
    assert changes == {("resource", f"everything/{doc}", "narrowed"), ("prompt", "everything/args-prompt", "widened")}
    replayed = mcp_guard("replay", "--audit", "audit.jsonl", "--policies", str(new), "--json", cwd=tmp_path)
    data = json.loads(replayed.stdout)
    assert [(c["kind"], c["target"], c["recorded"], c["new"]) for c in data["changed"]] == [
        ("resource", f"everything/{doc}", "allow", "approve")]
    assert data["replayed"] == 2
