"""``python -m mcp_guard`` = the ``mcp-guard`` command."""

from mcp_guard.cli import main

main()
