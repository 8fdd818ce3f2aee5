"""Policies back to YAML: ``parse_text(dump(ps)).policies == list(ps)``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from mcp_guard.kinds import Kind
from mcp_guard.policy.model import SELECTORS, Policy


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def policy_to_data(policy: Policy) -> dict[str, Any]:
    out: dict[str, Any] = {"id": policy.id}
    if policy.description is not None:
        out["description"] = policy.description
    if policy.mode != "enforce":
        out["mode"] = policy.mode
    subjects = {k: list(v) for k, v in (("users", policy.subjects.users), ("agents", policy.subjects.agents), ("purposes", policy.subjects.purposes)) if v is not None}
    if subjects:
        out["subjects"] = subjects
    rules = []
    for rule in policy.rules:
        rd: dict[str, Any] = {}
        if rule.id is not None:
            rd["id"] = rule.id
        rd["effect"] = rule.effect.value
        for key in SELECTORS:
            if rule.selectors(Kind(key[:-1])):
                rd[key] = list(rule.selectors(Kind(key[:-1])))
        if rule.annotations:
            rd["annotations"] = dict(rule.annotations)
        if rule.when:
            rd["when"] = {c.key: {op: _thaw(v) for op, v in c.ops} for c in rule.when}
        if rule.reason is not None:
            rd["reason"] = rule.reason
        rules.append(rd)
    out["rules"] = rules
    if policy.limits:
        out["limits"] = [
            {**{k: list(v) for k, v in (("tools", lim.tools), ("resources", lim.resources), ("prompts", lim.prompts)) if v},
             **{k: v for k, v in (("per_minute", lim.per_minute), ("per_session", lim.per_session)) if v is not None}}
            for lim in policy.limits
        ]
    return out


def dump(policies: Iterable[Policy]) -> str:
    """The YAML text of ``policies``; ``parse_text(dump(ps)).policies == list(ps)``."""
    doc = {"version": 1, "policies": [policy_to_data(p) for p in policies]}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
