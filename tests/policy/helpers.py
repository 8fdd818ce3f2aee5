"""Small builders shared by the policy tests."""

from __future__ import annotations

from typing import Any

import yaml

from mcp_guard.identity import Principal
from mcp_guard.policy import PolicySet, load_sources

ALICE = Principal(user="alice@example.com", agents=("support-bot",), purpose="ticket-triage")


def policy_set(*policies: dict[str, Any]) -> PolicySet:
    return load_sources([("test.yaml", yaml.safe_dump({"version": 1, "policies": list(policies)}, sort_keys=False))])


def one_rule(when: dict[str, Any] | None = None, effect: str = "allow", tools: list[str] | None = None, **rule: Any) -> PolicySet:
    r: dict[str, Any] = {"effect": effect, "tools": tools or ["fs/read"], **rule}
    if when is not None:
        r["when"] = when
    return policy_set({"id": "p", "rules": [r]})


def allows(ps: PolicySet, args: dict[str, Any] | None = None, tool: str = "fs/read", who: Principal = ALICE) -> bool:
    return ps.decide(who, tool, args).allowed
