"""The loopback redirect of an authorization code login: a one-shot listener on a loopback address.

The browser brings the authorization code back to ``http://127.0.0.1:PORT/callback`` (or the
configured redirect URI); the listener answers one page, hands the query to the waiting login and
closes.  A login that waits longer than its limit fails with ``LoginRequired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import parse_qs, urlsplit

from mcp_guard.config import LOOPBACK_HOSTS, OAuthConfig
from mcp_guard.errors import LoginRequired
from mcp_guard.upstreams.oauth_store import TokenStore

CALLBACK_PATH = "/callback"


class LoopbackCallback:
    """A one-shot HTTP listener on a loopback address that receives the authorization redirect."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host  # "localhost" listens on every loopback address it names (127.0.0.1 and ::1)
        self.port = port
        self._result: asyncio.Future[dict[str, str]] | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._result = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 10.0)).decode("latin-1")
            while (await asyncio.wait_for(reader.readline(), 10.0)).strip():
                pass  # headers: not needed
            parts = line.split()
            target = urlsplit(parts[1]) if len(parts) >= 2 else None
            if target is None or target.path != CALLBACK_PATH:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            params = {k: v[0] for k, v in parse_qs(target.query).items()}
            body = b"<!doctype html><title>mcp-guard</title><p>Authorization received. You can close this window."
            if "error" in params:
                body = b"<!doctype html><title>mcp-guard</title><p>Authorization was not granted. You can close this window."
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            if self._result is not None and not self._result.done():
                self._result.set_result(params)
        except (TimeoutError, OSError, UnicodeError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()

    async def wait(self, seconds: float) -> dict[str, str]:
        assert self._result is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._result), seconds)
        except TimeoutError:
            raise LoginRequired(f"no authorization arrived at the loopback redirect within {seconds:.0f}s") from None
        finally:
            await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def redirect_uri(auth: OAuthConfig, store: TokenStore) -> str:
    """The configured URI, else the one a stored registration was made with, else a free port."""
    if auth.redirect_uri:
        return auth.redirect_uri
    client = store.load().get("client") or {}
    for uri in client.get("redirect_uris") or []:
        u = urlsplit(str(uri))
        if u.scheme == "http" and u.hostname in LOOPBACK_HOSTS and u.port:
            return str(uri)
    return f"http://127.0.0.1:{_free_port()}{CALLBACK_PATH}"
