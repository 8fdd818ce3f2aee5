"""The report's headline: how much of its authority each subject used, and which unused
permissions are the risky ones to take away first.

Risk comes from a tool's annotations as pinned in guard.lock, read the way MCP says to read
absent hints (the pessimistic defaults: not read-only, destructive, open-world), so a tool that
says nothing about itself counts as risky.  Pure: a ``SubjectReport`` and definitions in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.policy.model import ANNOTATION_DEFAULTS
from mcp_guard.report import SubjectReport

RISKS = ("destructive", "open-world", "writes")


def risks(annotations: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``destructive``, ``open-world``, ``writes`` (most severe first) for one tool's annotations."""
    given = annotations if isinstance(annotations, Mapping) else {}

    def hint(name: str) -> bool:
        value = given.get(name)
        return value if isinstance(value, bool) else ANNOTATION_DEFAULTS[name]

    read_only = hint("readOnlyHint")
    out = []
    if not read_only and hint("destructiveHint"):
        out.append("destructive")
    if hint("openWorldHint"):
        out.append("open-world")
    if not read_only:
        out.append("writes")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Unused:
    tool: str
    risks: tuple[str, ...]
    annotated: bool  # False: no pinned annotations, so MCP's pessimistic defaults decided


@dataclass(frozen=True, slots=True)
class Headline:
    """``used`` of ``allowed`` tools; the unused ones, risky first."""

    used: int
    allowed: int
    unused: tuple[Unused, ...]

    @property
    def risky(self) -> int:
        return sum(1 for u in self.unused if u.risks)

    def __str__(self) -> str:
        return (f"least privilege: used {self.used} of {self.allowed} allowed tools"
                + (f"; {len(self.unused)} never used, {self.risky} of them risky" if self.unused else ""))

    def to_json(self) -> dict[str, Any]:
        return {"used": self.used, "allowed": self.allowed, "risky_unused": self.risky,
                "never_used_risky_first": [{"tool": u.tool, "risks": list(u.risks), "annotated": u.annotated} for u in self.unused]}


def headline(subject: SubjectReport, annotations: Mapping[str, Mapping[str, Any] | None]) -> Headline:
    """``annotations``: ``UPSTREAM/TOOL`` -> pinned annotations (absent: the tool is not pinned)."""
    unused = [Unused(t, risks(annotations.get(t)), isinstance(annotations.get(t), Mapping)) for t in subject.never_used]
    unused.sort(key=lambda u: (tuple(r not in u.risks for r in RISKS), u.tool))
    used = len(subject.used_tools())
    return Headline(used, used + len(unused), tuple(unused))
