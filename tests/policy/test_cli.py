"""``mcp-guard explain`` and ``mcp-guard test`` end to end through the real click commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcp_guard.cli import main

REPO = Path(__file__).resolve().parents[2]
SUPPORT = """\
version: 1
policies:
  - id: support-tickets
    subjects: {users: ["*@example.com"], agents: [support-bot], purposes: [ticket-triage]}
    rules:
      - effect: allow
        tools: ["fs/read_text_file"]
        when: {args.path: {under: /srv/tickets}}
      - effect: approve
        tools: ["fs/write_file"]
        when: {args.path: {under: /srv/tickets}}
      - effect: deny
        tools: ["fs/move_file"]
        reason: Moves are never delegated.
"""


@pytest.fixture
def guard(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "support.yaml").write_text(SUPPORT)
    cfg = tmp_path / "guard.yaml"
    cfg.write_text("version: 1\nupstreams:\n  fs: {command: mcp-server-filesystem}\npolicies: ./policies\n"
                   "identity: {user: alice@example.com, agent: support-bot, purpose: ticket-triage}\n")
    return cfg


def explain(cfg: Path, tool: str, args: dict[str, object] | None = None, *extra: str) -> tuple[int, str]:
    argv = ["explain", "--config", str(cfg), "--tool", tool, *extra]
    if args is not None:
        argv += ["--args", json.dumps(args)]
    result = CliRunner().invoke(main, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_explain_exit_codes(guard: Path) -> None:
    assert explain(guard, "fs/read_text_file", {"path": "/srv/tickets/1"})[0] == 0
    assert explain(guard, "fs/read_text_file", {"path": "/srv/tickets/../x"})[0] == 1
    assert explain(guard, "fs/write_file", {"path": "/srv/tickets/1"})[0] == 2
    assert explain(guard, "fs/move_file", {})[0] == 1


def test_explain_prints_every_rule_and_whether_it_matched(guard: Path) -> None:
    code, out = explain(guard, "fs/read_text_file", {"path": "/etc/passwd"})
    assert code == 1
    assert "decision: deny" in out
    assert "reason: mcp-guard denied fs/read_text_file: args.path must be under /srv/tickets (policy support-tickets)" in out
    assert out.count("  rule ") == 3  # every rule, not only the candidates
    assert "args.path must be under /srv/tickets: no" in out
    assert "/etc/passwd" not in out


def test_explain_takes_identity_options_over_the_config(guard: Path) -> None:
    code, out = explain(guard, "fs/read_text_file", {"path": "/srv/tickets/1"}, "--user", "eve@evil.test")
    assert code == 1 and "subjects do not match (users)" in out


def test_explain_refuses_an_unconfigured_upstream_and_bad_json(guard: Path) -> None:
    code, out = explain(guard, "nope/read", {})
    assert code == 1 and "no upstream named `nope` is configured" in out
    result = CliRunner().invoke(main, ["explain", "--config", str(guard), "--tool", "fs/read_text_file", "--args", "{nope"])
    assert result.exit_code == 1 and "--args is not valid JSON" in result.output and "Traceback" not in result.output


def test_mcp_guard_test_passes_on_the_shipped_policies() -> None:
    result = CliRunner().invoke(main, ["test", str(REPO / "policies")])
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.output and "FAIL" not in result.output


def test_mcp_guard_test_reports_each_failure_and_exits_1(tmp_path: Path) -> None:
    shutil.copy(REPO / "policies" / "time.yaml", tmp_path / "time.yaml")
    (tmp_path / "time.test.yaml").write_text(
        "cases:\n"
        "  - name: right\n    principal: {user: u}\n    call: {tool: time/get_current_time, args: {timezone: UTC}}\n    expect: allow\n"
        "  - name: wrong\n    principal: {user: u}\n    call: {tool: time/get_current_time, args: {timezone: UTC}}\n    expect: deny\n"
    )
    result = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert result.exit_code == 1
    assert "PASS" in result.output and "time.test.yaml:2: right" in result.output
    assert "FAIL" in result.output and "time.test.yaml:6: wrong — expected deny, got allow" in result.output
    assert "1 passed, 1 failed" in result.output


def test_mcp_guard_test_fails_when_the_policies_do_not_load(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\npolicies:\n  - id: p\n    rules: [{effect: alow, tools: [a/b]}]\n")
    (tmp_path / "p.test.yaml").write_text("cases:\n  - {name: x, principal: {user: u}, call: {tool: a/b}, expect: allow}\n")
    result = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert result.exit_code == 1 and "did you mean `allow`?" in result.output


def test_mcp_guard_test_without_test_files_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert result.exit_code == 1 and "no *.test.yaml files" in result.output


def test_explain_with_a_grant_takes_its_identity_and_intersects_the_decision(guard: Path, tmp_path: Path) -> None:
    from mcp_guard.grants import issue_grant, load_private_key, write_keypair

    priv, _jwk, pem = write_keypair(tmp_path / "keys")
    cfg = guard.read_text() + f"trust:\n  issuers:\n    corp: {pem}\n"
    guard.write_text(cfg.replace("identity: {user: alice@example.com, agent: support-bot, purpose: ticket-triage}\n", ""))
    token = issue_grant(load_private_key(priv), "corp", "alice@example.com", "support-bot", ["fs/read_text_file"],
                        purpose="ticket-triage")
    code, out = explain(guard, "fs/read_text_file", {"path": "/srv/tickets/1"}, "--grant", token)
    assert code == 0, out
    assert "user:alice@example.com -> agent:support-bot" in out and "permits the call" in out
    code, out = explain(guard, "fs/write_file", {"path": "/srv/tickets/1"}, "--grant", token)
    assert code == 1 and "decision: deny (policies alone: approve)" in out


def test_explain_with_a_grant_shows_every_link_verdict(guard: Path, tmp_path: Path) -> None:
    from mcp_guard.grants import delegate, generate_keypair, issue_grant, load_private_key, write_keypair

    priv, _jwk, pem = write_keypair(tmp_path / "keys")
    cfg = guard.read_text() + f"trust:\n  issuers:\n    corp: {pem}\n"
    guard.write_text(cfg.replace("identity: {user: alice@example.com, agent: support-bot, purpose: ticket-triage}\n", ""))
    bot_key, bot_pub = generate_keypair()
    root = issue_grant(load_private_key(priv), "corp", "alice@example.com", "support-bot", ["fs/*"],
                       purpose="ticket-triage", agent_key=bot_pub, depth=1)
    chain = delegate(root, bot_key, "summarizer", ["fs/read_text_file"])
    code, out = explain(guard, "fs/write_file", {"path": "/srv/tickets/1"}, "--grant", chain)
    assert code == 1
    assert "link 0 (corp -> agent support-bot" in out and "permits (via fs/*)" in out
    assert "link 1 (agent:support-bot -> agent summarizer" in out and "refuses: fs/write_file is not among its tools" in out
    assert "listed in tools/list: no" in out
    assert "chain refuses: the grant of agent summarizer does not include fs/write_file" in out


DOCS = """\
version: 1
policies:
  - id: docs
    rules:
      - effect: allow
        resources: ["fs/*"]
        when: {uri: {under: "file:///srv/tickets"}}
      - effect: allow
        prompts: ["fs/summarise"]
      - effect: deny
        tools: ["fs/read_text_file"]
        when: {args.path: {under: /srv/tickets/secret}}
      - effect: allow
        tools: ["fs/read_text_file"]
"""


def explain_argv(cfg: Path, *argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["explain", "--config", str(cfg), *argv])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_explain_resources_and_prompts(guard: Path) -> None:
    (guard.parent / "policies" / "docs.yaml").write_text(DOCS)
    code, out = explain_argv(guard, "--resource", "fs/file:///srv/tickets/1.md")
    assert code == 0 and "resource: fs/file:///srv/tickets/1.md (listed in resources/list: yes)" in out, out
    code, out = explain_argv(guard, "--resource", "file:///etc/passwd")  # bare URI: the only upstream
    assert code == 1 and "mcp-guard denied resource fs/file:///etc/passwd" in out, out
    assert explain_argv(guard, "--prompt", "fs/summarise")[0] == 0
    code, out = explain_argv(guard, "--prompt", "summarise")
    assert code == 1 and "--prompt must be UPSTREAM/PROMPT" in out
    code, out = explain_argv(guard, "--tool", "fs/x", "--prompt", "fs/y")
    assert code == 1 and "exactly one of --tool, --resource or --prompt" in out


def test_explain_a_bare_uri_needs_exactly_one_upstream(guard: Path) -> None:
    guard.write_text(guard.read_text().replace("  fs: {command: mcp-server-filesystem}\n",
                                               "  fs: {command: mcp-server-filesystem}\n  git: {command: mcp-server-git}\n"))
    code, out = explain_argv(guard, "--resource", "file:///srv/tickets/1")
    assert code == 1 and "names no upstream and the configuration has 2 upstreams (fs, git): write UPSTREAM/URI" in out


def test_explain_judges_relative_paths_against_the_upstream_workdir(guard: Path) -> None:
    (guard.parent / "policies" / "docs.yaml").write_text(DOCS)
    for p in ("secret/s.txt", "./secret/s.txt", "a/../secret/s.txt"):
        code, out = explain_argv(guard, "--tool", "fs/read_text_file", "--args", json.dumps({"path": p}))
        assert code == 1, (p, out)  # no workdir: a relative path cannot be judged, so the deny matches
    guard.write_text(guard.read_text().replace("  fs: {command: mcp-server-filesystem}\n",
                                               "  fs: {command: mcp-server-filesystem, workdir: /srv/tickets}\n"))
    assert explain_argv(guard, "--tool", "fs/read_text_file", "--args", json.dumps({"path": "open/a.txt"}))[0] == 0
    code, out = explain_argv(guard, "--tool", "fs/read_text_file", "--args", json.dumps({"path": "a/../secret/s.txt"}))
    assert code == 1 and "decided by: docs#3" in out, out


def test_policy_tests_name_resources_and_prompts(tmp_path: Path) -> None:
    (tmp_path / "docs.yaml").write_text(DOCS)
    (tmp_path / "docs.test.yaml").write_text(
        "cases:\n"
        "  - {name: r1, principal: {user: u}, call: {resource: fs/file:///srv/tickets/1}, expect: allow, visible: true}\n"
        "  - {name: r2, principal: {user: u}, call: {resource: 'file:///srv/x', upstream: fs}, expect: deny, visible: false}\n"
        "  - {name: p1, principal: {user: u}, call: {prompt: fs/summarise, args: {style: short}}, expect: allow}\n"
        "  - {name: w1, principal: {user: u}, call: {tool: fs/read_text_file, args: {path: secret/a}, workdir: /srv/tickets}, expect: deny}\n"
        "  - {name: w2, principal: {user: u}, call: {tool: fs/read_text_file, args: {path: open/a}, workdir: /srv/tickets}, expect: allow}\n"
    )
    result = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert result.exit_code == 0 and "5 passed, 0 failed" in result.output, result.output


def test_policy_test_call_shapes_are_checked(tmp_path: Path) -> None:
    (tmp_path / "docs.yaml").write_text(DOCS)
    (tmp_path / "docs.test.yaml").write_text(
        "cases:\n"
        "  - {name: a, principal: {user: u}, call: {resource: 'file:///srv/x'}, expect: deny}\n"
        "  - {name: b, principal: {user: u}, call: {tool: fs/a, prompt: fs/b}, expect: deny}\n"
        "  - {name: c, principal: {user: u}, call: {prompt: fs/b, upstream: fs}, expect: deny}\n"
    )
    result = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert result.exit_code == 1
    assert "docs.test.yaml:2:54: `call.resource` must be UPSTREAM/URI (or give `upstream`)" in result.output
    assert "docs.test.yaml:3:" in result.output and "`call` needs exactly one of `tool`, `resource` or `prompt`" in result.output
    assert "`call.upstream` names the upstream of a bare `resource` URI" in result.output


def test_explain_as_a_process_resolves_symlinks_on_a_local_upstream(tmp_path: Path) -> None:
    """The installed command, a real workspace on disk, a symlink pointing out of the allowed root."""
    import subprocess
    import sys

    ws = tmp_path / "ws"
    (ws / "secret").mkdir(parents=True)
    (ws / "open").mkdir()
    (ws / "open" / "link").symlink_to(ws / "secret")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "ws.yaml").write_text(
        "version: 1\npolicies:\n  - id: ws\n    rules:\n"
        f"      - {{effect: allow, tools: [fs/read_text_file], when: {{args.path: {{under: {ws}}}}}}}\n"
        f"      - {{effect: deny, tools: [fs/read_text_file], when: {{args.path: {{under: {ws}/secret}}}}}}\n")
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(f"version: 1\nupstreams:\n  fs: {{command: x, workdir: {ws}, resolve: true}}\npolicies: ./policies\n"
                   "identity: {user: alice}\n")
    exe = Path(sys.executable).parent / "mcp-guard"

    def run(path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), "explain", "--config", str(cfg), "--tool", "fs/read_text_file", "--args",
                               json.dumps({"path": path})], capture_output=True, text=True, timeout=60, check=False)

    assert run("open/a.txt").returncode == 0
    linked = run("open/link/s.txt")
    assert linked.returncode == 1 and "decided by: ws#2" in linked.stdout and "Traceback" not in linked.stderr
    assert run(f"{ws}/open/link/new.txt").returncode == 1
    cfg.write_text(cfg.read_text().replace(", resolve: true", ""))
    assert run("open/link/s.txt").returncode == 0  # lexical: the link is invisible, as documented
