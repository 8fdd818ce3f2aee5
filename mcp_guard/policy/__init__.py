"""The policy engine: YAML tool policies -> a compiled ``PolicySet`` -> ``Decision`` values.

Pure: no asyncio, no MCP, no telemetry.  The public surface::

    policies = load("policies/")                     # or load_sources([(name, text), ...])
    decide(policies, principal, "fs/read_file", {"path": "/srv/a"})  -> Decision
    visible(policies, principal, "fs/read_file")                       -> bool
    policies.decide(principal, "docs/file:///srv/a.md", kind=Kind.RESOURCE)      # resources, prompts
    holder = PolicyHolder(lambda: load("policies/")); holder.reload()   # hot reload, keeps last good
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from mcp_guard.errors import ConfigError
from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext
from mcp_guard.policy._flow import NOTHING, Brought
from mcp_guard.policy.dump import dump
from mcp_guard.policy.engine import PolicySet
from mcp_guard.policy.files import policy_sources
from mcp_guard.policy.model import (
    Condition,
    Decision,
    Effect,
    FlowView,
    LabelEntry,
    Limit,
    Policy,
    Rule,
    RuleRef,
    Subjects,
)
from mcp_guard.policy.parse import Parsed, parse_sources, parse_text
from mcp_guard.policy.traces import BoundLimit, Explanation, PolicyTrace, RuleTrace

__all__ = [
    "NOTHING",
    "BoundLimit",
    "Brought",
    "Condition",
    "Decision",
    "Effect",
    "Explanation",
    "FlowView",
    "Kind",
    "LabelEntry",
    "Limit",
    "Parsed",
    "PathContext",
    "Policy",
    "PolicyHolder",
    "PolicyLoadError",
    "PolicySet",
    "PolicyTrace",
    "Rule",
    "RuleRef",
    "RuleTrace",
    "Subjects",
    "compile_parsed",
    "decide",
    "dump",
    "load",
    "load_sources",
    "parse_sources",
    "parse_text",
    "visible",
]


class PolicyLoadError(ConfigError):
    """Policy files with errors; ``problems`` holds every ``file:line:col: message`` line."""


def load_sources(sources: Iterable[tuple[str, str]], *, upstreams: Sequence[str] | None = None) -> PolicySet:
    """Parse and compile ``(file name, text)`` pairs; ``ConfigError`` lists every problem at once."""
    return compile_parsed(parse_sources(sources, upstreams=upstreams))


def compile_parsed(parsed: Parsed) -> PolicySet:
    """Compile parsed policies; ``ConfigError`` lists every problem at once when any is an error."""
    if parsed.errors:
        n = len(parsed.errors)
        raise PolicyLoadError(f"invalid policies ({n} problem{'s' if n != 1 else ''})", parsed.lines())
    return PolicySet(parsed.policies, [str(w) for w in parsed.warnings], parsed.labels)


def load(*paths: str | PathLike[str], upstreams: Sequence[str] | None = None) -> PolicySet:
    """Load policy files and directories (every ``*.yaml`` under them, ``*.test.yaml`` excepted)."""
    return load_sources(policy_sources([Path(p) for p in paths]), upstreams=upstreams)


def decide(policies: PolicySet, principal: Principal, tool: str, args: Mapping[str, Any] | None = None,
           annotations: Mapping[str, Any] | None = None, *, kind: Kind = Kind.TOOL,
           paths: PathContext | None = None, flow: FlowView | None = None) -> Decision:
    """Decide one request for ``tool`` (``UPSTREAM/NAME``); see ``PolicySet.decide``."""
    return policies.decide(principal, tool, args, annotations, kind=kind, paths=paths, flow=flow)


def visible(policies: PolicySet, principal: Principal, tool: str, annotations: Mapping[str, Any] | None = None, *,
            kind: Kind = Kind.TOOL) -> bool:
    """Whether a listing shows ``tool`` to ``principal``; see ``PolicySet.visible``."""
    return policies.visible(principal, tool, annotations, kind=kind)


class PolicyHolder:
    """The live policy set.  ``reload`` builds the new set beside the old and swaps the reference
    (atomic for readers); a broken source keeps the last good set and returns why."""

    def __init__(self, build: Callable[[], PolicySet]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self.current: PolicySet = build()
        self.last_problems: list[str] = []

    def reload(self) -> list[str]:
        """Rebuild; returns the problems that kept the old set ([] when swapped in)."""
        with self._lock:
            try:
                fresh = self._build()
            except ConfigError as exc:
                self.last_problems = list(exc.problems)
                return self.last_problems
            self.current = fresh
            self.last_problems = []
            return []
