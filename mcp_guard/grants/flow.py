"""Information-flow claims of a grant link (docs/grants.md): the labels its holder's sessions
start with, the ceiling of labels they may ever acquire, and what the principal endorsed.

They travel in the link's ``mcp_tool_grant`` authorization detail as ``labels``,
``label_ceiling``, ``endorse`` and ``endorse_sources``.  Attenuation: a child's starting labels
include its parent's, its ceiling is within its parent's, its endorsements within its parent's;
an absent member is inherited.  A chain whose starting labels exceed its ceiling is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp_guard.grants.errors import MALFORMED, GrantError

MEMBERS = ("labels", "label_ceiling", "endorse", "endorse_sources")
LABEL_WIDENED = "label_widened"
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_SOURCE_KEYS = frozenset({"tools", "resources", "prompts", "when"})


@dataclass(frozen=True, slots=True)
class FlowClaims:
    """One link's flow members (None = not stated: inherited from the parent)."""

    labels: tuple[str, ...] | None = None
    label_ceiling: tuple[str, ...] | None = None
    endorse: tuple[str, ...] | None = None
    endorse_sources: tuple[Mapping[str, Any], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) for k, v in ((m, getattr(self, m)) for m in MEMBERS) if v is not None}


NONE = FlowClaims()


def _labels(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) and _LABEL.fullmatch(x) for x in value):
        raise GrantError(MALFORMED, f"{name} must be a list of labels (lower-case letters, digits, _ and -)")
    return tuple(dict.fromkeys(value))


def _source(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value.keys() <= _SOURCE_KEYS or not (value.keys() & {"tools", "resources", "prompts"}):
        raise GrantError(MALFORMED, "an endorse_sources entry is {tools|resources|prompts: [...], when: {...}}")
    return value


def parse_flow(detail: Mapping[str, Any]) -> FlowClaims:
    """The flow members of an authorization detail (shape only)."""
    if not any(m in detail for m in MEMBERS):
        return NONE
    endorse = detail.get("endorse")
    if endorse is not None and (not isinstance(endorse, list) or not all(isinstance(x, str) and x for x in endorse)):
        raise GrantError(MALFORMED, "endorse must be a list of non-empty strings")
    sources = detail.get("endorse_sources")
    if sources is not None and not isinstance(sources, list):
        raise GrantError(MALFORMED, "endorse_sources must be a list of selectors")
    return FlowClaims(
        _labels(detail["labels"], "labels") if "labels" in detail else None,
        _labels(detail["label_ceiling"], "label_ceiling") if "label_ceiling" in detail else None,
        tuple(endorse) if endorse is not None else None,
        tuple(_source(s) for s in sources) if sources is not None else None,
    )


def _key(source: Mapping[str, Any]) -> str:
    return json.dumps(source, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Effective:
    """What a chain's flow claims amount to at one link (every earlier link applied)."""

    labels: frozenset[str] = frozenset()
    ceiling: frozenset[str] | None = None
    endorse: frozenset[str] = frozenset()
    endorse_sources: tuple[Mapping[str, Any], ...] = ()

    def then(self, child: FlowClaims, where: str, *, root: bool = False) -> Effective:
        """Apply a child's claims, refusing any widening (``GrantError`` naming the field)."""
        labels = self.labels | set(child.labels or ())
        ceiling = self.ceiling
        if child.label_ceiling is not None:
            wanted = frozenset(child.label_ceiling)
            if ceiling is not None and not wanted <= ceiling:
                extra = ", ".join(sorted(wanted - ceiling))
                raise GrantError(LABEL_WIDENED, f"label_ceiling: {where} allows {extra}, beyond its parent's ceiling")
            ceiling = wanted
        if ceiling is not None and not labels <= ceiling:
            extra = ", ".join(sorted(labels - ceiling))
            raise GrantError(LABEL_WIDENED, f"label_ceiling: {where} starts with {extra}, which its label ceiling excludes")
        endorse = self.endorse
        if child.endorse is not None:
            wanted = frozenset(child.endorse)
            if not root and not wanted <= self.endorse:
                raise GrantError(LABEL_WIDENED, f"endorse: {where} endorses {', '.join(sorted(wanted - self.endorse))}, which its parent does not")
            endorse = wanted
        sources = self.endorse_sources
        if child.endorse_sources is not None:
            known = {_key(s) for s in self.endorse_sources}
            if not root and any(_key(s) not in known for s in child.endorse_sources):
                raise GrantError(LABEL_WIDENED, f"endorse_sources: {where} endorses a source its parent does not")
            sources = child.endorse_sources
        return Effective(frozenset(labels), ceiling, endorse, sources)


def effective(claims: Sequence[FlowClaims]) -> Effective:
    """The chain's flow claims, root first; raises on any widening."""
    out = Effective()
    for i, c in enumerate(claims):
        out = out.then(c, f"link {i}", root=i == 0)
    return out


__all__ = ["LABEL_WIDENED", "MEMBERS", "NONE", "Effective", "FlowClaims", "effective", "parse_flow"]
