"""``HttpxLink``: the exchanges of ``http1.py`` over an ``httpx2.AsyncClient``; used when the upstream has
``auth:`` (the OAuth providers are ``httpx2.Auth`` flows) or when a proxy from the environment
applies to its URL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx2

from mcp_guard.upstreams.http1 import Exchange, LinkError, collect_body


class _HttpxExchange:
    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def read(self, limit: int) -> bytes:
        try:
            return await collect_body(self.chunks(), limit)
        finally:
            await self.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx2.HTTPError as exc:
            raise LinkError(f"closed the connection in the middle of a response ({exc})") from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxLink:
    """The same exchanges through an ``httpx2.AsyncClient`` (its auth flow, its proxy support)."""

    def __init__(self, client: httpx2.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url

    async def request(self, method: str, headers: Mapping[str, str], body: bytes | None) -> Exchange:
        request = self._client.build_request(method, self._url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx2.ConnectError as exc:
            raise LinkError(f"could not be connected to ({exc})", connect=True) from None
        except httpx2.HTTPError as exc:
            raise LinkError(f"failed ({type(exc).__name__}: {exc})") from None
        return _HttpxExchange(response)

    async def aclose(self) -> None:
        await self._client.aclose()
