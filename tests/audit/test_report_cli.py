"""``mcp-guard report`` on hand-made audit logs: the broken chain, the time window, hostile text in
tool names and reasons, and the narrowing rules (conditions kept, nothing widened).  The end-to-end
run against a real guard is tests/e2e/test_report_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mcp_guard.audit import AuditLog
from mcp_guard.cli import main
from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.policy import Effect, load_sources

POLICY = {
    "version": 1,
    "policies": [
        {"id": "fs", "subjects": {"users": ["*@example.com"]}, "rules": [
            {"effect": "allow", "tools": ["fs/read_*"], "when": {"args.path": {"under": "/srv"}}},
            {"effect": "allow", "tools": ["fs/list_directory", "fs/search_files"]},
            {"effect": "deny", "tools": ["fs/read_secret"], "reason": "Secrets stay secret."},
        ], "limits": [{"tools": ["fs/*"], "per_session": 50}]},
    ],
}


def _record(tool: str, decision: str, *, user: str = "alice@example.com", agent: str = "bot", when: str = "2026-05-09T07:00:00.000000Z",
            reason: str | None = None) -> dict[str, Any]:
    return {"time": when, "principal": [f"user:{user}", f"agent:{agent}"], "user": user, "agent": agent, "verified": False,
            "purpose": None, "upstream": "fs", "tool": tool, "decision": decision, "reason": reason, "policy_ids": ["fs"], "rule_ids": []}


def _setup(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "fs.yaml").write_text(yaml.safe_dump(POLICY))
    (tmp_path / "guard.yaml").write_text(yaml.safe_dump({
        "version": 1, "upstreams": {"fs": {"command": "true"}}, "policies": "./policies",
        "audit": {"path": "./audit.jsonl"}, "state": {"url": "memory://"}}))
    with AuditLog(str(tmp_path / "audit.jsonl")) as log:
        for r in records:
            log.append(r)
    return tmp_path / "guard.yaml"


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["report", *args])
    return result.exit_code, result.stdout, result.stderr


RECORDS = [
    _record("read_text_file", "allow"),
    _record("read_text_file", "allow"),
    _record("read_secret", "deny", reason="mcp-guard denied fs/read_secret: Secrets stay secret. (policy fs)"),
    _record("list_directory", "budget_exhausted", reason="mcp-guard denied fs/list_directory: the call budget is used up"),
]


def test_without_a_lock_the_tool_names_come_from_the_log(tmp_path: Path) -> None:
    config = _setup(tmp_path, RECORDS)
    code, out, _ = _run("--config", str(config), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["tool_source"].startswith("the policies (3 tools named) and the audit log only")
    (s,) = data["subjects"]
    assert s["used"] == {"fs/read_text_file": {"allow": 2}}
    assert s["refused"]["fs/list_directory"]["decisions"] == {"budget_exhausted": 1}
    # fs/list_directory: allowed, only ever refused for its budget; fs/search_files: named by the
    # policy, never called; fs/read_secret is named too but denied
    assert s["never_used"] == ["fs/list_directory", "fs/search_files"]


def test_without_a_lock_and_without_calls_the_literal_names_of_the_policies_count(tmp_path: Path) -> None:
    config = _setup(tmp_path, [_record("read_text_file", "allow")])
    data = json.loads(_run("--config", str(config), "--json")[1])
    assert data["subjects"][0]["never_used"] == ["fs/list_directory", "fs/search_files"]
    code, out, _ = _run("--config", str(config))
    assert code == 0 and "fs/search_files" in out and "none" not in out.split("never used")[1].splitlines()[0], out


def test_the_lock_adds_tools_nobody_called(tmp_path: Path) -> None:
    config = _setup(tmp_path, RECORDS)
    (tmp_path / "guard.lock").write_text(json.dumps({"version": 1, "upstreams": {"fs": {
        "read_text_file": "sha256:1", "read_media_file": "sha256:2", "search_files": "sha256:3", "write_file": "sha256:4"}}}))
    data = json.loads(_run("--config", str(config), "--json")[1])
    assert data["tool_source"].startswith("guard.lock (4 pinned tools)")
    assert data["subjects"][0]["never_used"] == ["fs/list_directory", "fs/read_media_file", "fs/search_files"]


def test_a_broken_chain_is_refused_unless_allowed_and_then_shouted(tmp_path: Path) -> None:
    config = _setup(tmp_path, RECORDS)
    log = tmp_path / "audit.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"allow"', '"deny"')  # edited after the fact
    log.write_text("\n".join(lines) + "\n")
    code, out, err = _run("--config", str(config))
    assert code == 1 and out == ""
    assert "BROKEN" in err and "audit.jsonl:2" in err and "--allow-broken" in err
    code, out, err = _run("--config", str(config), "--allow-broken", "--html", str(tmp_path / "r.html"))
    assert code == 1
    assert out.startswith("!!!") and "BROKEN at" in out and "do not trust this report" in out
    assert "the audit chain is BROKEN" in (tmp_path / "r.html").read_text()
    data = json.loads(_run("--config", str(config), "--allow-broken", "--json")[1])
    assert data["chain"]["ok"] is False and data["chain"]["where"].endswith("audit.jsonl:2")


def test_since_keeps_only_the_window(tmp_path: Path) -> None:
    config = _setup(tmp_path, [_record("read_text_file", "allow", when="2020-01-01T00:00:00Z"),
                               _record("search_files", "allow", when="2099-01-01T00:00:00Z")])
    data = json.loads(_run("--config", str(config), "--json", "--since", "7d")[1])
    assert data["window"]["records"] == 1 and data["window"]["skipped"] == 1
    assert list(data["subjects"][0]["used"]) == ["fs/search_files"]
    data = json.loads(_run("--config", str(config), "--json", "--since", "2019-12-31")[1])
    assert data["window"]["records"] == 2
    code, _, err = _run("--config", str(config), "--since", "last tuesday")
    assert code == 1 and "--since must be a duration" in err


def test_hostile_names_and_reasons_are_escaped_in_html(tmp_path: Path) -> None:
    evil = '<script>alert(1)</script><img src="http://evil.example/x">'
    config = _setup(tmp_path, [_record(evil, "deny", reason=evil), _record("read_text_file", "allow", agent=evil)])
    code, _, _ = _run("--config", str(config), "--html", str(tmp_path / "r.html"))
    assert code == 0
    page = (tmp_path / "r.html").read_text()
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page


def test_no_log_is_one_sentence(tmp_path: Path) -> None:
    config = _setup(tmp_path, [])
    (tmp_path / "audit.jsonl").unlink()
    code, _, err = _run("--config", str(config))
    assert code == 1 and "cannot read the audit log" in err and "Traceback" not in err


def test_narrowing_keeps_conditions_limits_and_denies(tmp_path: Path) -> None:
    config = _setup(tmp_path, [*RECORDS, _record("search_files", "allow", user="bob@example.com", agent="other")])
    code, _, _ = _run("--config", str(config), "--narrowed", str(tmp_path / "narrow.yaml"))
    assert code == 0
    text = (tmp_path / "narrow.yaml").read_text()
    ps = load_sources([("narrow.yaml", text)])
    alice = Principal("alice@example.com", ("bot",))
    bob = Principal("bob@example.com", ("other",))
    assert ps.decide(alice, "fs/read_text_file", {"path": "/srv/a"}).effect is Effect.ALLOW
    assert ps.decide(alice, "fs/read_text_file", {"path": "/etc/passwd"}).effect is Effect.DENY  # condition kept
    assert ps.decide(alice, "fs/read_media_file", {"path": "/srv/a"}).effect is Effect.DENY  # the glob is not kept
    assert ps.decide(alice, "fs/search_files", {}).effect is Effect.DENY  # bob's tool is bob's
    assert ps.decide(bob, "fs/search_files", {}).effect is Effect.ALLOW
    assert ps.decide(bob, "fs/read_text_file", {"path": "/srv/a"}).effect is Effect.DENY
    assert ps.decide(Principal("alice@example.com", ("intruder",)), "fs/read_text_file", {"path": "/srv/a"}).effect is Effect.DENY
    assert ps.decide(alice, "fs/read_secret", {}).reason.endswith("Secrets stay secret (policy fs)")
    assert all(p.limits for p in ps.policies if ".used" in p.id)


@pytest.mark.parametrize("user", ["*@example.com", "al?ce@example.com"])
def test_glob_characters_in_a_name_are_never_narrowed_into_a_glob(tmp_path: Path, user: str) -> None:
    config = _setup(tmp_path, [_record("list_directory", "allow", user=user)])
    code, _, _ = _run("--config", str(config), "--narrowed", str(tmp_path / "narrow.yaml"))
    assert code == 0
    policies = yaml.safe_load((tmp_path / "narrow.yaml").read_text())["policies"]
    assert [p["id"] for p in policies] == ["fs"]  # no allow for a subject that cannot be named literally


def test_the_timeline_is_linear_in_time(tmp_path: Path) -> None:
    config = _setup(tmp_path, [_record("list_directory", "allow", when="2026-05-09T00:10:00Z"),
                               _record("read_secret", "deny", when="2026-05-09T03:20:00Z")])
    timeline = json.loads(_run("--config", str(config), "--json")[1])["timeline"]
    assert timeline["bucket"] == "hour"
    assert [(p["start"][11:16], p.get("used", 0), p.get("refused", 0)) for p in timeline["points"]] == [
        ("00:00", 1, 0), ("01:00", 0, 0), ("02:00", 0, 0), ("03:00", 0, 1)]


def test_narrowing_never_widens_a_policy_to_another_purpose(tmp_path: Path) -> None:
    """A policy for purpose `triage` only: the same agent also worked under `billing` (another
    policy); the narrowed `triage` policy must not start applying to `billing`."""
    config = _setup(tmp_path, [])
    (tmp_path / "policies" / "fs.yaml").write_text(yaml.safe_dump({"version": 1, "policies": [
        {"id": "triage", "subjects": {"purposes": ["triage"]}, "rules": [{"effect": "allow", "tools": ["fs/read_text_file", "fs/write_file"]}]},
        {"id": "billing", "subjects": {"purposes": ["billing"]}, "rules": [{"effect": "allow", "tools": ["fs/list_directory"]}]},
    ]}))
    with AuditLog(str(tmp_path / "audit.jsonl")) as log:
        for tool, purpose in (("read_text_file", "triage"), ("list_directory", "billing"), ("write_file", "triage")):
            log.append({**_record(tool, "allow"), "purpose": purpose})
    code, _, _ = _run("--config", str(config), "--narrowed", str(tmp_path / "narrow.yaml"))
    assert code == 0
    ps = load_sources([("narrow.yaml", (tmp_path / "narrow.yaml").read_text())])
    billing = Principal("alice@example.com", ("bot",), "billing")
    triage = Principal("alice@example.com", ("bot",), "triage")
    assert ps.decide(triage, "fs/write_file", {}).effect is Effect.ALLOW
    assert ps.decide(billing, "fs/write_file", {}).effect is Effect.DENY
    assert ps.decide(billing, "fs/list_directory", {}).effect is Effect.ALLOW
    assert ps.decide(triage, "fs/list_directory", {}).effect is Effect.DENY


def test_narrowed_ids_stay_valid_and_unique(tmp_path: Path) -> None:
    long_id = "p" * 128
    config = _setup(tmp_path, [_record("list_directory", "allow")])
    (tmp_path / "policies" / "fs.yaml").write_text(yaml.safe_dump({"version": 1, "policies": [
        {"id": long_id, "rules": [{"effect": "allow", "tools": ["fs/*"]}]},
        {"id": "a", "rules": [{"effect": "allow", "tools": ["fs/list_directory"]}]},
        {"id": "a.used1", "rules": [{"effect": "deny", "tools": ["fs/write_file"]}]},
    ]}))
    code, _, _ = _run("--config", str(config), "--narrowed", str(tmp_path / "narrow.yaml"))
    assert code == 0
    assert CliRunner().invoke(main, ["check", str(tmp_path / "narrow.yaml")]).exit_code == 0
    ids = [p["id"] for p in yaml.safe_load((tmp_path / "narrow.yaml").read_text())["policies"]]
    assert len(set(ids)) == len(ids) == 3 and "a.used1" in ids and all(len(i) <= 128 for i in ids)


def test_prompts_resources_and_unknown_names(tmp_path: Path) -> None:
    config = _setup(tmp_path, [])
    (tmp_path / "policies" / "fs.yaml").write_text(yaml.safe_dump({"version": 1, "policies": [{"id": "kinds", "rules": [
        {"effect": "allow", "prompts": ["fs/*"]},
        {"effect": "allow", "resources": ["fs/file:///srv/*"]},
        {"effect": "allow", "resources": ["fs/file:///home/*"]},
        {"effect": "deny", "resources": ["fs/*"], "when": {"uri": {"glob": "*secret*"}}},
    ]}]}))
    base = {k: v for k, v in _record("x", "allow").items() if k != "tool"}
    with AuditLog(str(tmp_path / "audit.jsonl")) as log:
        log.append({**base, "kind": "prompt", "method": "prompts/get", "prompt": "summarise"})
        log.append({**base, "kind": "resource", "method": "resources/read", "uri": "file:///srv/a%20b.md"})
        log.append({**base, "kind": "resource", "method": "resources/read", "uri": "file:///srv/secret.md", "decision": "deny",
                    "reason": "mcp-guard denied fs/file:///srv/secret.md"})
        log.append({**base, "kind": "tool", "method": "tools/call", "tool": "fs_nope", "decision": "unknown", "reason": "Unknown tool: fs_nope"})
        log.append({**base, "kind": None, "method": "sampling/whatever", "decision": "unknown", "reason": "Method not found"})
    data = json.loads(_run("--config", str(config), "--json", "--narrowed", str(tmp_path / "narrow.yaml"))[1])
    (s,) = data["subjects"]
    assert set(s["used"]) == {"prompt:fs/summarise", "resource:fs/file:///srv/a%20b.md"}
    assert set(s["refused"]) == {"resource:fs/file:///srv/secret.md", "fs_nope", "method:sampling/whatever"}
    assert s["never_used"] == []  # "never used" is about tools
    narrowed = yaml.safe_load((tmp_path / "narrow.yaml").read_text())["policies"]
    rules = next(p for p in narrowed if p["id"] == "kinds.used1")["rules"]
    assert rules == [{"effect": "allow", "prompts": ["fs/summarise"]}, {"effect": "allow", "resources": ["fs/file:///srv/*"]}]
    ps = load_sources([("narrow.yaml", (tmp_path / "narrow.yaml").read_text())])
    assert CliRunner().invoke(main, ["check", str(tmp_path / "narrow.yaml")]).exit_code == 0
    alice = Principal("alice@example.com", ("bot",))
    assert ps.decide(alice, "fs/file:///srv/secret.md", {}, kind=Kind.RESOURCE).effect is Effect.DENY
    assert ps.decide(alice, "fs/file:///home/x", {}, kind=Kind.RESOURCE).effect is Effect.DENY
    assert ps.decide(alice, "fs/other", {}, kind=Kind.PROMPT).effect is Effect.DENY
