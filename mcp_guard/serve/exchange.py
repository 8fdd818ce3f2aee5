"""``POST /token``: RFC 8693 token exchange from an OAuth access token to a grant-chain root.

An agent that holds an access token this guard accepts trades it for a root grant naming the same
user, agent and purpose, signed by ``serve.token_exchange.key`` and bound (``cnf``) to the public
key the agent sends as ``cnf_jwk``.  The root's audience is ``serve.url`` (so a guard trusting the
same key for another audience refuses it) and it expires no later than the access token.  With it
the agent delegates narrower links to sub-agents offline (``mcp-guard grant delegate``), and the
guard verifies the whole chain.  The root grants every tool (``*/*``) unless the request narrows
it with ``tools``; the guard's policies apply to every call either way.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_guard.config import TokenExchangeConfig
from mcp_guard.grants import GrantError, issue_grant, load_private_key
from mcp_guard.grants.keys import jwk_to_public_key

if TYPE_CHECKING:
    from mcp_guard.identity import Principal


class Subject(Protocol):
    """The verified caller of an OAuth subject token (``serve.resource.Caller`` is one)."""

    @property
    def principal(self) -> Principal: ...

    @property
    def claims(self) -> Mapping[str, Any]: ...

    @property
    def issuer(self) -> str | None: ...


class Front(Protocol):
    """What the exchange needs of the HTTP front (``serve.asgi.HttpGuard``): it reads the body and
    identifies the subject token as any bearer is identified, without importing the front."""

    async def read_body(self, request: Request) -> bytes | Response: ...

    def _is_oauth(self, token: str) -> bool: ...

    async def identify(self, request: Request | None, token: str) -> Subject | Response: ...

log = logging.getLogger("mcp_guard.http")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
GRANT_CHAIN_TYPE = "urn:mcp-guard:params:oauth:token-type:grant-chain"
DELEGATION_DEPTH = 3  # hops the agent may delegate below the root


def _oauth_error(code: str, description: str, status: int = 400) -> Response:
    return JSONResponse({"error": code, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store"})


class TokenExchange:
    def __init__(self, config: TokenExchangeConfig, audience: str) -> None:
        """``audience``: ``serve.url``, the only audience the roots it issues name."""
        self.config = config
        self.audience = audience
        self.key = load_private_key(config.key)

    async def handle(self, guard: Front, request: Request) -> Response:
        body = await guard.read_body(request)
        if isinstance(body, Response):
            return body
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _oauth_error("invalid_request", "send the parameters as application/x-www-form-urlencoded")
        from urllib.parse import parse_qs

        try:
            raw = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return _oauth_error("invalid_request", "the body is not UTF-8")
        if any(len(v) > 1 for v in raw.values()):
            return _oauth_error("invalid_request", "a parameter was given more than once")
        form: dict[str, str] = {k: v[0] for k, v in raw.items()}
        if form.get("grant_type") != GRANT_TYPE:
            return _oauth_error("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
            return _oauth_error("invalid_request", f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
        wanted = form.get("requested_token_type")
        if wanted not in (None, "", GRANT_CHAIN_TYPE):
            return _oauth_error("invalid_request", f"requested_token_type must be {GRANT_CHAIN_TYPE}")
        subject = form.get("subject_token", "")
        if not guard._is_oauth(subject):
            return _oauth_error("invalid_request", "subject_token must be an OAuth access token from an issuer this guard trusts")
        caller = await guard.identify(None, subject)
        if isinstance(caller, Response):
            return _oauth_error("invalid_grant" if caller.status_code == 401 else "invalid_scope",
                                "the subject_token is not accepted here: " + _reason(caller))
        try:
            agent_key = jwk_to_public_key(json.loads(form.get("cnf_jwk") or "null"))
        except (ValueError, GrantError) as exc:
            return _oauth_error("invalid_request", f"cnf_jwk must be the agent's Ed25519 public key as a JWK ({exc})")
        tools = form.get("tools", "").split() or ["*/*"]
        who = caller.principal
        now = math.floor(time.time())
        ttl = min(self.config.ttl, float(caller.claims["exp"]) - now)  # never outlives the token it came from
        if ttl < 1:
            return _oauth_error("invalid_grant", "the subject_token expires within a second; get a fresh one")
        try:
            chain = issue_grant(
                self.key, self.config.issuer, who.user, who.agent, tools,
                agent_key=agent_key, purpose=who.purpose, ttl=math.floor(ttl), depth=DELEGATION_DEPTH,
                audience=self.audience, now=now,
            )
        except GrantError as exc:
            return _oauth_error("invalid_request", str(exc))
        log.info("token exchange: %s got a grant-chain root from %s (tools %s)", " > ".join(who.chain), caller.issuer, " ".join(tools))
        out: dict[str, Any] = {
            "access_token": chain,
            "issued_token_type": GRANT_CHAIN_TYPE,
            "token_type": "N_A",
            "expires_in": math.floor(ttl),
        }
        return JSONResponse(out, headers={"Cache-Control": "no-store"})


def _reason(refusal: Response) -> str:
    header = refusal.headers.get("www-authenticate", "")
    marker = 'error_description="'
    return header[header.find(marker) + len(marker):-1] if marker in header else "invalid token"
