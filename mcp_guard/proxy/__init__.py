"""MCP-aware, transport-agnostic core of the guard: one ``GuardSession`` per host session."""
