"""The aggregated tool catalogue: every upstream's tools under their host-facing names."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mcp_guard.config import EXPOSED_NAME
from mcp_guard.jsonrpc import Message
from mcp_guard.pinning import PinSet, PinStatus, tool_digest
from mcp_guard.request import Target
from mcp_guard.upstreams.connection import Upstream

log = logging.getLogger("mcp_guard.catalogue")


class Catalogue:
    """Rebuilt whenever an upstream (re)connects or says its list changed; lookups are dict hits."""

    def __init__(self, pins: PinSet | None = None, mode: str = "off") -> None:
        self.pins = pins if pins is not None else PinSet()
        # off | warn | enforce; warn without a lock file has nothing to compare with (said once at start)
        self.mode = "off" if pins is None and mode == "warn" else mode
        self._warned: set[tuple[str, str]] = set()
        self.entries: tuple[Target, ...] = ()
        self.by_exposed: dict[str, Target] = {}
        self.version = 0
        self.problems: list[str] = []

    def rebuild(self, upstreams: Iterable[Upstream]) -> None:
        entries: list[Target] = []
        by_exposed: dict[str, Target] = {}
        problems: list[str] = []
        for up in upstreams:
            for tool in up.tools:
                name = tool["name"]
                exposed = up.config.exposed(name)
                if not EXPOSED_NAME.fullmatch(exposed):
                    problems.append(
                        f"tool {up.name}/{name} is not exposed: `{exposed}` is not a host-safe name ([A-Za-z0-9_-], at most 64 characters)"
                    )
                    continue
                if exposed in by_exposed:
                    other = by_exposed[exposed]
                    problems.append(
                        f"tool name collision: {other.qualified} and {up.name}/{name} would both be exposed as `{exposed}` "
                        f"(set `prefix: true` on one of the upstreams)"
                    )
                    continue
                definition = dict(tool)
                definition["name"] = exposed
                pin: PinStatus = "off" if self.mode == "off" else self.pins.status(up.name, tool)
                if pin in ("new", "changed"):
                    self._warn(up.name, tool, pin)
                trusted = up.config.trust_annotations or pin == "pinned"
                annotations = tool.get("annotations") if trusted else None
                entry = Target(
                    exposed,
                    up.name,
                    name,
                    f"{up.name}/{name}",
                    definition,
                    annotations if isinstance(annotations, dict) else None,
                    pin,
                    self.mode == "enforce" and pin in ("new", "changed"),
                )
                by_exposed[exposed] = entry
                entries.append(entry)
        for p in problems:
            if p not in self.problems:
                log.error("%s", p)
        self.entries, self.by_exposed, self.problems = tuple(entries), by_exposed, problems
        self.version += 1

    def _warn(self, upstream: str, tool: Message, pin: str) -> None:
        key = (f"{upstream}/{tool['name']}", tool_digest(tool))
        if key in self._warned:
            return
        self._warned.add(key)
        what = "is not in the lock file" if pin == "new" else "changed since it was pinned"
        action = "hidden and refused until `mcp-guard pin --update` accepts it" if self.mode == "enforce" else "allowed (pinning: warn)"
        log.warning("tool %s %s: %s", key[0], what, action)

    def collisions(self) -> list[str]:
        return [p for p in self.problems if p.startswith("tool name collision")]
