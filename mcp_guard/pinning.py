"""Tool pinning: a lock file of every upstream tool's definition hash, so a tool that appears or
changes after review (a "rug pull": new description, widened schema) is caught.

With ``pinning: enforce`` such a tool is hidden and refused until ``mcp-guard pin --update``
accepts it; with ``warn`` it is logged and audited.  Annotations of a pinned, unchanged tool are
trusted by policies' ``annotations:`` selectors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcp_guard.audit import canonical
from mcp_guard.errors import ConfigError

PinStatus = Literal["pinned", "new", "changed", "off"]
DEFINITION_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def tool_digest(tool: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of what a model reads about a tool (docs/pinning.md)."""
    return "sha256:" + hashlib.sha256(canonical({k: tool[k] for k in DEFINITION_KEYS if k in tool})).hexdigest()


@dataclass(frozen=True, slots=True)
class PinSet:
    """The accepted definitions: upstream -> tool name -> digest; ``definitions`` keeps the
    pinned definitions themselves (upstream -> name -> definition), so offline tools (``check``,
    ``diff``, ``report``) know each tool's input schema and annotations as they were reviewed."""

    pins: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    definitions: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict, compare=False)

    def definition(self, upstream: str, name: str) -> Mapping[str, Any] | None:
        """The pinned definition of ``upstream/name``, or None (not pinned, or not recorded)."""
        return self.definitions.get(upstream, {}).get(name)

    def status(self, upstream: str, tool: Mapping[str, Any]) -> PinStatus:
        pinned = self.pins.get(upstream, {}).get(str(tool.get("name")))
        if pinned is None:
            return "new"
        return "pinned" if pinned == tool_digest(tool) else "changed"


@dataclass(frozen=True, slots=True)
class PinDiff:
    new: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.new or self.changed or self.removed)


def diff(current: PinSet, tools: Mapping[str, Iterable[Mapping[str, Any]]]) -> tuple[PinSet, PinDiff]:
    """The pin set that accepts ``tools`` (upstream -> definitions), and what that changes."""
    fresh: dict[str, dict[str, str]] = {}
    defs_out: dict[str, dict[str, Mapping[str, Any]]] = {}
    new: list[str] = []
    changed: list[str] = []
    for upstream, defs in tools.items():
        fresh[upstream] = {}
        for tool in defs:
            name = str(tool.get("name"))
            fresh[upstream][name] = tool_digest(tool)
            defs_out.setdefault(upstream, {})[name] = {k: tool[k] for k in DEFINITION_KEYS if k in tool}
            status = current.status(upstream, tool)
            if status == "new":
                new.append(f"{upstream}/{name}")
            elif status == "changed":
                changed.append(f"{upstream}/{name}")
    removed = [
        f"{up}/{name}" for up, names in current.pins.items() if up in tools for name in names if name not in fresh.get(up, {})
    ]
    for up, names in current.pins.items():  # upstreams that were not reachable keep their pins
        if up not in tools:
            fresh[up] = dict(names)
            defs_out[up] = dict(current.definitions.get(up, {}))
    return PinSet(fresh, defs_out), PinDiff(tuple(sorted(new)), tuple(sorted(changed)), tuple(sorted(removed)))


def read_lock(path: Path) -> PinSet | None:
    """The lock file, or None when there is none yet; a corrupt file is a ConfigError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}:1:1: the lock file cannot be read: {exc}") from None
    ups = data.get("upstreams") if isinstance(data, dict) else None
    if data.get("version") != 1 or not isinstance(ups, dict):
        raise ConfigError(f"{path}:1:1: not an mcp-guard lock file (expected version 1 with `upstreams`)")
    pins = {str(u): {str(t): str(d) for t, d in (tools or {}).items()} for u, tools in ups.items()}
    raw = data.get("definitions")
    defs: dict[str, dict[str, Mapping[str, Any]]] = {}
    for u, named in (raw.items() if isinstance(raw, dict) else ()):
        for t, d in (named.items() if isinstance(named, dict) else ()):
            # only a definition that is what was pinned: an edited one is ignored, never trusted
            if isinstance(d, dict) and pins.get(str(u), {}).get(str(t)) == tool_digest({**d, "name": t}):
                defs.setdefault(str(u), {})[str(t)] = d
    return PinSet(pins, defs)


def write_lock(path: Path, pins: PinSet) -> None:
    """Write atomically (temp file + rename), sorted, one tool per line for readable diffs."""
    body: dict[str, Any] = {"version": 1, "upstreams": {u: dict(sorted(t.items())) for u, t in sorted(pins.pins.items())}}
    if pins.definitions:
        body["definitions"] = {u: dict(sorted(d.items())) for u, d in sorted(pins.definitions.items()) if d}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
