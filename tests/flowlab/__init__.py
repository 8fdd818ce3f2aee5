"""The flow lab: scripted agents against real MCP servers through a real guard (see docs/flow.md)."""
