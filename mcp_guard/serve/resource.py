"""``serve`` as an OAuth resource server: who a request comes from (``Caller``), proven by its
``Authorization: Bearer`` token (an OAuth access token or a grant chain), the 401/403 refusals with
their ``WWW-Authenticate`` challenge, and the RFC 9728 protected resource metadata."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_guard.config import ServeConfig
from mcp_guard.grants import ChainVerifier, GrantChain, GrantError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import INVALID_REQUEST, error
from mcp_guard.serve.binding import principal_key, root_key, session_binding, store_key
from mcp_guard.serve.oauth import OAuthError, OAuthVerifier

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

log = logging.getLogger("mcp_guard.http")

WELL_KNOWN = "/.well-known/oauth-protected-resource"
CALLERS_KEPT = 1024  # grant-chain callers remembered by token (a client sends the same token on every request)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from, as proven by its bearer token."""

    principal: Principal
    chain: GrantChain | None
    binding: str  # what a session is bound to: the whole principal (and a grant chain's token)
    issuer: str | None = None  # the OAuth issuer, None for a grant chain
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        """The principal's user and agent chain: what ``max_sessions_per_principal`` counts."""
        return principal_key(self.principal)

    @property
    def owner_id(self) -> str:
        """A short, store-safe key for the principal (limits in the state store)."""
        return store_key(self.owner)

    @property
    def root(self) -> str:
        """The delegating root: what ``max_sessions_per_root`` counts."""
        return root_key(self.issuer, self.principal, self.chain)


class McpRequest(Request):
    """A request to the MCP endpoint: Starlette's, with its headers read once into a dict by lower-case
    name (the first of a repeated field wins, as in Starlette's ``Headers.get``): each request reads
    seven of them, and ``Headers`` scans every line for each.  Read as it is made: every request to
    the endpoint reads them (``functools.cached_property`` takes a lock on Python 3.11)."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        super().__init__(scope, receive)
        self.head: dict[str, str] = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def resource_metadata_url(resource: str) -> str:
    """RFC 9728: the well-known URI is inserted between the host and the resource's path."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{parts.path.rstrip('/')}"

class ResourceServer:
    """Authentication of each request, and what tells a client how to get a token."""

    def __init__(self, verifier: ChainVerifier, serve: ServeConfig, chain_issuers: frozenset[str],
                 oauth: OAuthVerifier | None) -> None:
        self.verifier = verifier
        self.chain_issuers = chain_issuers  # trust.issuers: a JWT naming one of these is a grant chain
        self.oauth = oauth
        self.serve = serve
        self.mcp_path = "/mcp"
        self._callers: dict[str, Caller] = {}  # grant-chain token -> its caller, while the verifier holds the same chain

    def _challenge(self, request: Request | None, code: str | None, description: str | None, scope: str | None = None) -> str:
        parts = ['Bearer realm="mcp-guard"']
        if self.oauth is not None:
            parts.append(f'resource_metadata="{self._metadata_url(request)}"')
        if code:
            parts.append(f'error="{code}"')
        if scope:
            parts.append(f'scope="{scope}"')
        if description:
            parts.append('error_description="{}"'.format(description.replace('"', "'").replace("\\", "/")))
        return ", ".join(parts)

    def _metadata_url(self, request: Request | None) -> str:
        if self.serve.url:
            return resource_metadata_url(self.serve.url)
        base = str(request.base_url).rstrip("/") if request is not None else ""
        return f"{base}{WELL_KNOWN}{self.mcp_path}"

    async def metadata(self, request: Request) -> Response:
        """RFC 9728 protected resource metadata."""
        assert self.oauth is not None
        resource = self.serve.url or f"{str(request.base_url).rstrip('/')}{self.mcp_path}"
        body: dict[str, Any] = {
            "resource": resource,
            "authorization_servers": list(self.oauth.issuers),
            "bearer_methods_supported": ["header"],
            "resource_name": "mcp-guard",
        }
        if self.oauth.scopes:
            body["scopes_supported"] = list(self.oauth.scopes)
        return JSONResponse(body, headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "max-age=300"})

    def _refuse(self, request: Request | None, status: int, code: str | None, description: str, scope: str | None = None) -> Response:
        if scope is None and self.oauth is not None and self.oauth.scopes:
            scope = " ".join(self.oauth.scopes)
        word = "Forbidden" if status == 403 else "Unauthorized"
        log.info("refused a request with HTTP %d: %s", status, description)  # no tool call: not an audit decision
        return JSONResponse(
            error(None, INVALID_REQUEST, f"{word}: {description}"),
            status_code=status,
            headers={"WWW-Authenticate": self._challenge(request, code, description if code else None, scope)},
        )

    async def authenticate(self, request: McpRequest) -> Caller | Response:
        """The caller proven by ``Authorization: Bearer``, or the 401/403 refusal to send."""
        auth = request.head.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            what = "an OAuth access token or a grant chain" if self.oauth is not None else "a grant chain"
            return self._refuse(request, 401, None, f"{what} is required: Authorization: Bearer <token>")
        return await self.identify(request, token)

    async def identify(self, request: Request | None, token: str) -> Caller | Response:
        if self.oauth is not None and self._is_oauth(token):
            try:
                access = await self.oauth.verify(token)
            except OAuthError as exc:
                return self._refuse(request, exc.status, exc.error, str(exc), exc.scope)
            who = access.principal
            return Caller(who, None, session_binding(access.issuer, who), access.issuer, access.claims)
        try:
            chain = self.verifier.verify(token, time.time())
        except GrantError as exc:
            return self._refuse(request, 401, "invalid_token", f"{exc.code}: {exc}")
        known = self._callers.get(token)
        if known is not None and known.chain is chain:  # verified (and time-checked) above: only the digests are saved
            return known
        if len(self._callers) >= CALLERS_KEPT:
            self._callers.clear()
        caller = self._callers[token] = Caller(chain.principal, chain, session_binding(None, chain.principal, token_key(token)))
        return caller

    def _is_oauth(self, token: str) -> bool:
        """An OAuth access token: one JWT (a chain of several links has ``~``) whose issuer is not
        one of the grant-chain issuers (``trust.issuers``)."""
        if self.oauth is None or "~" in token:
            return False
        iss = self._oauth_issuer(token)
        return iss in self.oauth.issuers or iss not in self.chain_issuers

    @staticmethod
    def _oauth_issuer(token: str) -> str | None:
        import jwt

        with contextlib.suppress(jwt.PyJWTError):
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
            return iss if isinstance(iss, str) else None
        return None

    async def read_body(self, request: Request) -> bytes | Response:
        """The request body, refused with 413 as soon as it passes ``serve.max_body`` (never buffered past it)."""
        limit = self.serve.max_body
        declared = (request.head if isinstance(request, McpRequest) else request.headers).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return self._too_large(limit)
        chunks: list[bytes] = []
        size = 0
        receive = request.receive  # ASGI messages read directly: no async generator per request
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the caller went away mid-body
                return Response(status_code=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return self._too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _too_large(limit: int) -> Response:
        """413, made only when it is the answer (not for every request)."""
        return JSONResponse(error(None, INVALID_REQUEST, f"Request too large: the limit is {limit} bytes"), status_code=413,
                            headers={"Connection": "close"})

