"""Rules a policy's shape cannot show: conditions that never hold, rules a deny always covers,
conditions their rule's selectors can never supply.  Warnings unless a rule would mislead.
"""

from __future__ import annotations

import math
from typing import Any

from mcp_guard.policy._match import glob_covers
from mcp_guard.policy.model import PRINCIPAL_KEYS, Condition, Effect, Rule
from mcp_guard.yamlsrc import Path, SourceReader


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def lint_condition(r: SourceReader, cond: Condition, path: Path) -> None:
    """Warn about conditions that can never hold (they make their rule dead)."""
    ops = dict(cond.ops)
    dead = None
    if ops.get("in") == ():
        dead = "`in: []` never holds"
    elif is_number(ops.get("min")) and is_number(ops.get("max")) and ops["min"] > ops["max"]:
        dead = "`min` is greater than `max`"
    elif ops.get("present") is False and len(ops) > 1:
        dead = "`present: false` with another operator never holds"
    elif cond.key in PRINCIPAL_KEYS and ops.get("present") is False and cond.key != "purpose":
        dead = f"`{cond.key}` is always present"
    if dead:
        r.error(path, f"condition on `{cond.key}` can never hold: {dead}, so this rule never matches", warning=True, value=False)


def check_keys(r: SourceReader, selected: dict[str, tuple[str, ...]], when: list[Condition], path: Path) -> bool:
    """A condition its rule's selectors can never supply is an error: it would make the rule
    dead (an allow never matches) or, worse, look like a restriction it is not."""
    ok = True
    for cond in when:
        if cond.is_uri and "resources" not in selected:
            r.error((*path, "when", cond.key), "a `uri` condition needs `resources` in its rule: tools and prompts have no URI",
                    "select resources: [UPSTREAM/URI_GLOB], or use args.<name> for a tool's argument", value=False)
            ok = False
        elif cond.key.startswith("args.") and set(selected) == {"resources"}:
            r.error((*path, "when", cond.key), "resources have no arguments, so an `args.*` condition never holds here",
                    "use the `uri` key to judge a resource", value=False)
            ok = False
    return ok


def lint_shadowed(r: SourceReader, rules: list[tuple[int, Rule]], path: Path) -> None:
    """Warn about allow/approve rules every tool of which an unconditional deny already covers."""
    blanket = [(i, rule) for i, rule in rules if rule.effect is Effect.DENY and not rule.when and not rule.annotations]
    for i, rule in rules:
        if rule.effect is Effect.DENY:
            continue
        for j, deny in blanket:
            if not rule.resources and not rule.prompts and not deny.resources and not deny.prompts and \
                all(any(glob_covers(w, t) for w in deny.tools) for t in rule.tools):
                r.error((*path, "rules", i), f"this {rule.effect} rule can never apply: rule {deny.id or j + 1} of the same policy denies all its tools unconditionally",
                        warning=True, value=False)
                break
