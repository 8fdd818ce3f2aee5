"""The starting configuration ``mcp-guard init`` writes from the tools it observed.

A tool's annotations are the server's own claims, untrusted unless pinned.  So the starting
policy names every observed tool literally (never an ``annotations:`` selector), the lock file
pins exactly those definitions, and the annotations only decide where a tool starts out:

| annotations (as observed) | starting effect |
|---|---|
| ``destructiveHint: true`` or ``openWorldHint: true`` | ``approve`` (a human decides each call) |
| ``readOnlyHint: true`` (and neither of the above) | ``allow`` |
| anything else, no annotations | not allowed: default deny (listed as a comment to move) |

Only explicit ``true`` counts: the MCP defaults for absent hints are not applied, so a tool that
says nothing stays denied.  Everything here is pure: text in, text out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from mcp_guard.policy import Effect
from mcp_guard.policy.siblings import path_arguments

_PATTERN_SAFE = re.compile(r"^[^\s*?\[\]]{1,128}$")  # a literal tool name that is no glob
_RID = re.compile(r"[^A-Za-z0-9_.:@-]")


@dataclass(frozen=True, slots=True)
class StartingTool:
    upstream: str
    name: str
    effect: Effect  # DENY = no rule (default deny)
    why: str
    description: str
    paths: tuple[str, ...] = ()  # its path-like arguments (by its input schema): ``path``, ``paths[*]`` for a list

    @property
    def qualified(self) -> str:
        return f"{self.upstream}/{self.name}"


def classify(tool: Mapping[str, Any]) -> tuple[Effect, str]:
    """The starting effect of one observed tool definition and the annotations that decided it."""
    ann = tool.get("annotations")
    ann = ann if isinstance(ann, dict) else {}
    said = [k for k in ("readOnlyHint", "destructiveHint", "openWorldHint") if ann.get(k) is True]
    if "destructiveHint" in said or "openWorldHint" in said:
        return Effect.APPROVE, " and ".join(k for k in said if k != "readOnlyHint")
    if "readOnlyHint" in said:
        return Effect.ALLOW, "readOnlyHint"
    return Effect.DENY, "not annotated read-only, destructive or open-world" if not ann else "annotated, but not read-only"


def starting_tools(tools: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[StartingTool]:
    out: list[StartingTool] = []
    for upstream, defs in tools.items():
        for tool in sorted(defs, key=lambda t: str(t.get("name"))):
            name = str(tool.get("name"))
            effect, why = classify(tool)
            if not _PATTERN_SAFE.fullmatch(name):
                effect, why = Effect.DENY, "its name cannot be written as a literal policy pattern"
            desc = " ".join(str(tool.get("description") or "").split())
            schema = tool.get("inputSchema")
            props = schema.get("properties") if isinstance(schema, dict) else None
            props = props if isinstance(props, dict) else {}
            paths = tuple(f"{p}[*]" if props[p].get("type") == "array" else p for p in path_arguments(tool))
            out.append(StartingTool(upstream, name, effect, why, desc[:97] + "..." if len(desc) > 100 else desc, paths))
    return out


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def render_policy(upstream: str, tools: Sequence[StartingTool], origin: str, *, roots: Sequence[str] = ()) -> str:
    """One policy for one upstream, with a comment per tool saying why it starts where it does;
    ``roots`` (the directories the server was given) fill the ``when:`` skeletons of path-taking
    tools."""
    allow = [t for t in tools if t.effect is Effect.ALLOW]
    approve = [t for t in tools if t.effect is Effect.APPROVE]
    deny = [t for t in tools if t.effect is Effect.DENY]
    lines = [
        f"# Starting policy for upstream `{upstream}` ({origin}), written by `mcp-guard init`.",
        "# Tools are named literally: the annotations that placed them are the server's own claims,",
        "# trusted only because guard.lock pins the definitions seen when this file was written.",
        "# Narrow it: add `when:` conditions (e.g. args.path: {under: /my/project}) and `subjects:`.",
        "# Check: mcp-guard check --config ../guard.yaml    Test: mcp-guard test .",
        "version: 1",
        "policies:",
        f"  - id: {upstream}-start",
        f"    description: {_q(f'Observed tools of {upstream}: read-only ones allowed, destructive or open-world ones need a human.')}",
        "    rules:",
    ]
    if not allow and not approve:
        lines[-1] = "    rules: []"
        lines.insert(len(lines) - 1, "    # no tool is annotated read-only, destructive or open-world: everything starts denied")
    for effect, group, reason in (
        (Effect.ALLOW, allow, None),
        (Effect.APPROVE, approve, "It can change or reach beyond your machine; a person approves each call."),
    ):
        # tools that take paths get a rule per set of path arguments, with a `when:` skeleton: a
        # condition on an argument a tool does not have would deny it, so each set is its own rule
        by_paths: dict[tuple[str, ...], list[StartingTool]] = {}
        for t in group:
            by_paths.setdefault(t.paths, []).append(t)
        for paths, tools in sorted(by_paths.items()):
            rid = f"{effect.value}-observed" + "".join(f"-{_RID.sub('', p)}" for p in paths)
            lines.append(f"      - id: {rid}")
            lines.append(f"        effect: {effect.value}")
            lines.append("        tools:")
            for t in tools:
                lines.append(f"          - {_q(t.qualified)}  # {t.why}" + (f": {t.description}" if t.description else ""))
            if paths:
                root = roots[0] if roots else "/your/project"
                lines.append("        # These tools take paths: confine them (uncomment, set the root; every tool above")
                lines.append("        # takes exactly these arguments, so one condition covers them all):")
                lines.append("        # when:")
                for p in paths:
                    lines.append(f"        #   args.{p}: {{under: {_q(root)}}}")
            if reason:
                lines.append(f"        reason: {_q(reason)}")
    if deny:
        lines.append("    # Denied (no rule allows them, so they stay hidden); move a line into a rule above to allow one:")
        for t in deny:
            lines.append(f"    #   {_q(t.qualified)}  # {t.why}" + (f": {t.description}" if t.description else ""))
    return "\n".join(lines) + "\n"


def render_tests(upstream: str, tools: Sequence[StartingTool]) -> str:
    """One case per tool: the starting decision, and that denied tools are hidden."""
    lines = [
        f"# One case per observed tool of `{upstream}`: the decision the starting policy gives it.",
        "# Run: mcp-guard test .   (edit the expectations together with the policy)",
        "cases:",
    ]
    for t in tools:
        lines.append(f"  - name: {_q(f'{t.qualified} starts as {t.effect.value}')}")
        lines.append("    principal: {user: local-user, agent: agent}")
        lines.append(f"    call: {{tool: {_q(t.qualified)}, args: {{}}}}")
        lines.append(f"    expect: {t.effect.value}")
        if t.effect is Effect.DENY:
            lines.append("    visible: false")
    if not tools:
        lines[-1] = "cases: []"
    return "\n".join(lines) + "\n"


def render_guard_yaml(upstreams: Mapping[str, Mapping[str, Any]], origin: str, *, secrets: bool) -> str:
    """guard.yaml for the observed upstreams (``upstreams``: name -> guard.yaml mapping)."""
    body = yaml.safe_dump({"upstreams": dict(upstreams)}, sort_keys=False, allow_unicode=True, width=200)
    head = [
        f"# mcp-guard configuration written by `mcp-guard init` ({origin}).",
        "# Run:   mcp-guard run --config guard.yaml   (what your agent host launches)",
        "# Check: mcp-guard check --config guard.yaml",
    ]
    if secrets:
        head.append("# The servers' `env` values were copied from the host configuration: keep this file private (mode 0600).")
    tail = [
        "policies: ./policies",
        "identity:",
        "  user: ${USER:-local-user}",
        "  # agent: defaults to the host's clientInfo.name, recorded as self-asserted",
        "  # a delegated grant chain, when the host passes one (it then needs trust.issuers):",
        "  grant: ${MCP_GUARD_GRANT:-}",
        "# A tool that appears or changes after init is hidden and refused until you accept it:",
        "#   mcp-guard pin --config guard.yaml --update",
        "pinning: enforce",
        "approvals:",
        "  timeout: 120s",
        "audit:",
        "  path: ./audit.jsonl",
        "state:",
        "  url: sqlite:///.mcp-guard/state.db",
    ]
    return "\n".join([*head, "version: 1", body.rstrip("\n"), *tail]) + "\n"
