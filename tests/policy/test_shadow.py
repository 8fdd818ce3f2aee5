"""``mode: shadow``: a policy that is decided beside the live ones and never enforced."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from click.testing import CliRunner
from helpers import ALICE, policy_set

from mcp_guard.cli import main
from mcp_guard.decision import Outcome, evaluate
from mcp_guard.policy import dump, parse_text

LIVE = {"id": "live", "rules": [{"effect": "allow", "tools": ["fs/*"]}]}
TRIAL = {"id": "trial", "mode": "shadow", "rules": [
    {"effect": "deny", "tools": ["fs/write_file"], "reason": "No writes"},
    {"effect": "allow", "tools": ["fs/secret"]},
]}


def test_no_shadow_policy_means_no_shadow_set() -> None:
    assert policy_set(LIVE).shadow is None


def test_shadow_policy_is_never_enforced() -> None:
    ps = policy_set(LIVE, TRIAL)
    assert [p.id for p in ps.policies] == ["live"]
    assert ps.decide(ALICE, "fs/write_file", {}).allowed  # enforced: the live policy alone
    assert not ps.decide(ALICE, "web/fetch", {}).allowed
    assert not ps.visible(ALICE, "web/fetch")
    assert ps.limits(ALICE, "fs/write_file") == ()


def test_shadow_decision_is_live_and_shadow_together() -> None:
    ps = policy_set(LIVE, TRIAL)
    assert ps.shadow is not None and ps.shadow.shadow is None
    now = time.time()
    live = evaluate(ps, None, ALICE, "fs/write_file", {}, None, now)
    shadow = evaluate(ps.shadow, None, ALICE, "fs/write_file", {}, None, now)
    assert live.decision is Outcome.ALLOW
    assert shadow.decision is Outcome.DENY and shadow.rule_ids == ("trial#1",)


def test_shadow_only_set_enforces_nothing() -> None:
    """A set made only of shadow policies allows nothing (default deny), even what they allow."""
    ps = policy_set(TRIAL)
    assert not ps.decide(ALICE, "fs/secret", {}).allowed
    assert ps.shadow is not None and ps.shadow.decide(ALICE, "fs/secret", {}).allowed


def test_mode_round_trips_and_typos_are_errors() -> None:
    first = parse_text(yaml.safe_dump({"version": 1, "policies": [LIVE, TRIAL]}))
    assert [p.mode for p in first.policies] == ["enforce", "shadow"]
    assert parse_text(dump(first.policies)).policies == first.policies
    bad = parse_text("version: 1\npolicies:\n  - id: p\n    mode: shadw\n    rules: []\n", "p.yaml")
    assert [str(p) for p in bad.errors] == [
        "p.yaml:4:11: unknown mode `shadw` (enforce (the default) or shadow (decided and audited, never enforced))"]


def test_explain_shows_the_shadow_decision_beside_the_enforced_one(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"version": 1, "policies": [LIVE, TRIAL]}))
    result = CliRunner().invoke(main, ["explain", "--policies", str(tmp_path / "p.yaml"), "--tool", "fs/write_file", "--user", "a"])
    assert result.exit_code == 0, result.output  # allowed: the exit code is the enforced decision
    assert result.output.startswith("decision: allow\n")
    assert "shadow decision (with the `mode: shadow` policies enforced too): deny by trial#1" in result.output


def test_check_and_test_speak_json(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"version": 1, "policies": [LIVE, TRIAL, {"id": "bad", "rules": [{"effect": "alow", "tools": ["fs/x"]}]}]}))
    result = CliRunner().invoke(main, ["check", "--json", str(tmp_path / "p.yaml")])
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["ok"] is False and data["errors"] == 1
    assert data["problems"][0]["file"].endswith("p.yaml") and data["problems"][0]["severity"] == "error"
    assert "unknown effect `alow`" in data["problems"][0]["message"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"version": 1, "policies": [LIVE]}))
    (tmp_path / "p.test.yaml").write_text(yaml.safe_dump({"cases": [
        {"name": "reads", "principal": {"user": "a"}, "call": {"tool": "fs/read"}, "expect": "allow"},
        {"name": "wrong", "principal": {"user": "a"}, "call": {"tool": "web/get"}, "expect": "allow"}]}))
    result = CliRunner().invoke(main, ["test", "--json", str(tmp_path)])
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and (data["passed"], data["failed"]) == (1, 1)
    assert [(c["name"], c["passed"]) for c in data["cases"]] == [("reads", True), ("wrong", False)]
