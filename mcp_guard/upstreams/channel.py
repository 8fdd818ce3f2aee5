"""The message channel to one upstream server: the only thing that differs between stdio and HTTP."""

from __future__ import annotations

from typing import Protocol

from mcp_guard.jsonrpc import Message


class Channel(Protocol):
    """A bidirectional stream of JSON-RPC messages to one upstream."""

    async def open(self) -> None:
        """Start the child process / HTTP client.  Raises ``UpstreamError`` with a clear sentence."""

    async def send(self, message: Message) -> None:
        """Write one message; raises ``UpstreamError`` if the channel is gone."""

    async def receive(self) -> Message | None:
        """The next message, or None when the upstream is gone (EOF, exit, disconnect)."""

    async def close(self) -> None:
        """Stop the upstream; idempotent."""

    def exit_reason(self) -> str:
        """Why the channel ended, for error messages (e.g. "exited with code 1")."""
