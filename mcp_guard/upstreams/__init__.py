"""Connections to upstream MCP servers: stdio children and Streamable HTTP endpoints."""
