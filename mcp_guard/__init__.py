"""mcp-guard: an MCP gateway that enforces delegated agent authority.

The curated public API lives here; everything else is internal and may change.
"""

from __future__ import annotations

from mcp_guard.errors import AuditError, ConfigError, GuardError, StateError, UpstreamError
from mcp_guard.identity import Principal, principal
from mcp_guard.policy import Decision, Effect, PolicySet, decide, load, load_sources, visible

__version__ = "0.1.0"

__all__ = [
    "AuditError",
    "ConfigError",
    "Decision",
    "Effect",
    "GuardError",
    "PolicySet",
    "Principal",
    "StateError",
    "UpstreamError",
    "__version__",
    "decide",
    "load",
    "load_sources",
    "principal",
    "visible",
]
