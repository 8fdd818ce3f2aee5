"""mcp-guard: an MCP gateway that enforces delegated agent authority.

The curated public API lives here; everything else is internal and may change.  The policy part of
it is imported on first use, so a process that never decides (``mcp-guard --version``, ``audit``)
starts without the policy models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_guard.errors import AuditError, ConfigError, GuardError, StateError, UpstreamError
from mcp_guard.identity import Principal, principal

if TYPE_CHECKING:
    from mcp_guard.policy import Decision, Effect, PolicySet, decide, load, load_sources, visible

__version__ = "0.1.0"

_POLICY_API = frozenset({"Decision", "Effect", "PolicySet", "decide", "load", "load_sources", "visible"})


def __getattr__(name: str) -> object:
    if name in _POLICY_API:
        from mcp_guard import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'mcp_guard' has no attribute {name!r}")


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
