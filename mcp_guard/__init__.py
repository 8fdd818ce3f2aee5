"""mcp-guard: an MCP gateway that enforces delegated agent authority.

The curated public API lives here; everything else is internal and may change.
"""

from __future__ import annotations

from mcp_guard.errors import AuditError, ConfigError, GuardError, StateError, UpstreamError
from mcp_guard.identity import Principal, principal

__version__ = "0.1.0"

__all__ = [
    "AuditError",
    "ConfigError",
    "GuardError",
    "Principal",
    "StateError",
    "UpstreamError",
    "__version__",
    "principal",
]
