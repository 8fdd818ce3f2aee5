"""The transport every OAuth request of the guard goes through: no request to where it must not go.

Discovery targets come from the upstream's own answers (``resource_metadata``,
``authorization_servers``, endpoints in metadata), and the SDK follows redirects, so a hostile
server could aim the guard at its own network.  Every request (discovery, registration, token, and
those redirects) is refused unless it goes to the configured upstream, or is HTTPS (plain HTTP only
to loopback) and resolves to public addresses, unless the upstream itself is on a private or
loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

import httpx2

from mcp_guard.config import LOOPBACK_HOSTS
from mcp_guard.errors import AuthRefused

log = logging.getLogger("mcp_guard.upstream.oauth")


def _public(address: str) -> bool:
    return ipaddress.ip_address(address.split("%", 1)[0]).is_global


async def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _origin(url: httpx2.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class CheckedTransport(httpx2.AsyncBaseTransport):
    """Sends a request only to the configured upstream or to a target discovery may reach.

    Discovery targets come from the upstream's own answers (``resource_metadata``,
    ``authorization_servers``, endpoints in metadata): a hostile server could aim them at the
    guard's network.  So they must be HTTPS (HTTP only to a loopback host) and resolve to public
    addresses only, unless the configured upstream URL is itself private or loopback (then it is a
    local deployment and its authorization server may be too).
    """

    def __init__(self, upstream_url: str, inner: httpx2.AsyncBaseTransport | None = None,
                 on_refuse: Callable[[str], None] | None = None) -> None:
        self.upstream = httpx2.URL(upstream_url)
        self.inner = inner or httpx2.AsyncHTTPTransport()
        self.on_refuse = on_refuse  # the refusal ends the request outside the auth flow: report it
        self._local: bool | None = None

    async def _upstream_is_local(self) -> bool:
        if self._local is None:
            try:
                addresses = await _addresses(self.upstream.host, self.upstream.port or 443)
            except OSError:
                addresses = []
            self._local = any(not _public(a) for a in addresses)
        return self._local

    async def check(self, url: httpx2.URL) -> None:
        """Raises ``AuthRefused`` for a target the guard must not contact."""
        if _origin(url) == _origin(self.upstream):
            return
        shown = str(url.copy_with(query=None, fragment=None))
        local_ok = await self._upstream_is_local()
        if url.scheme != "https" and not (url.scheme == "http" and url.host in LOOPBACK_HOSTS and local_ok):
            raise AuthRefused(f"refused to contact {shown} during authorization: only https is allowed")
        try:
            addresses = await _addresses(url.host, url.port or (443 if url.scheme == "https" else 80))
        except OSError as exc:
            raise AuthRefused(f"cannot resolve {url.host} during authorization ({exc})") from None
        if not local_ok and any(not _public(a) for a in addresses):
            raise AuthRefused(
                f"refused to contact {shown} during authorization: it resolves to a private or loopback address"
            )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            await self.check(request.url)
        except AuthRefused as exc:
            log.warning("%s", exc)
            if self.on_refuse is not None:
                self.on_refuse(str(exc))
            raise
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

