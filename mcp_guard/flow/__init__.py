"""Information flow, the pure part: normalising and decoding text, and the content index behind
``carries`` (docs/policies.md).  No asyncio, no MCP, no OpenTelemetry."""

from mcp_guard.flow.index import RUN, WHOLE, ContentIndex
from mcp_guard.flow.text import decoded, normalise, strings_in, tokens

__all__ = ["RUN", "WHOLE", "ContentIndex", "decoded", "normalise", "strings_in", "tokens"]
