"""A session's flow as a decision sees it (the engine's ``FlowView``): labels, where each came
from, and the indexed content that brought them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcp_guard.flow.text import normalise

if TYPE_CHECKING:  # the index (and numpy) is imported by whoever builds one: a guard without flow rules never does
    from mcp_guard.flow.index import ContentIndex

ENDORSABLE = frozenset({"untrusted"})  # the label endorsements speak for (docs/grants.md)


@dataclass(frozen=True, slots=True)
class SessionView:
    """``index`` None: the content is not known (``explain --session-labels``), so ``carries`` on a
    held label cannot be judged.  ``overflow``: the content passed its bound; likewise."""

    labels: frozenset[str]
    index: ContentIndex | None = None
    origins: Mapping[str, tuple[str, int | None]] = field(default_factory=dict)
    overflow: bool = False
    endorsed: frozenset[str] = frozenset()

    def carries(self, strings: list[str], labels: tuple[str, ...], token: bool) -> bool | None:
        if self.overflow or self.index is None:
            return None
        return self.index.carries(strings, labels, token=token, endorsed=self.endorsed, endorsed_for=ENDORSABLE)

    def cause(self, label: str) -> str | None:
        origin = self.origins.get(label)
        if origin is None:
            return None
        source, record = origin
        return f"{source}, audit record {record:012x}" if record is not None else source


def endorsed(strings: tuple[str, ...]) -> frozenset[str]:
    """Endorsed strings in the form ``carries`` compares."""
    return frozenset(n for n in (normalise(s) for s in strings) if n)


__all__ = ["ENDORSABLE", "SessionView", "endorsed"]
