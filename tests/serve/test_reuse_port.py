"""The shared listening socket of ``serve --workers`` / ``--reuse-port``."""

from __future__ import annotations

import asyncio
import socket

from mcp_guard.serve.workers import reuse_port_socket


async def test_accepted_connections_get_tcp_nodelay() -> None:
    """asyncio turns Nagle off only on sockets that name IPPROTO_TCP; without it, a reply written
    in two parts (head, body) waited ~40 ms for the client's delayed ACK on every request."""
    listener = reuse_port_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_client, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(accepted, 5) != 0
        writer.close()
    finally:
        server.close()
