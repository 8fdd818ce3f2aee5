"""``mode: shadow``: a policy that is decided beside the live ones and never enforced."""

from __future__ import annotations

import time

import yaml
from helpers import ALICE, policy_set

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
