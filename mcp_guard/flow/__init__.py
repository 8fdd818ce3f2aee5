"""Information flow, the pure part: normalising and decoding text, and the content index behind
``carries`` (docs/policies.md).  No asyncio, no MCP, no OpenTelemetry.

The index (and numpy under it) is imported on first use: a guard whose policies have no flow rules
never builds one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_guard.flow.text import decoded, normalise, strings_in, tokens

if TYPE_CHECKING:
    from mcp_guard.flow.index import RUN, WHOLE, ContentIndex


def __getattr__(name: str) -> object:
    if name in ("RUN", "WHOLE", "ContentIndex"):
        from mcp_guard.flow import index

        return getattr(index, name)
    raise AttributeError(f"module 'mcp_guard.flow' has no attribute {name!r}")


__all__ = ["RUN", "WHOLE", "ContentIndex", "decoded", "normalise", "strings_in", "tokens"]
