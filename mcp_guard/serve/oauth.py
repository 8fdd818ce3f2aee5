"""``serve`` as an OAuth 2.1 resource server: JWT access tokens from configured issuers.

An access token is accepted only when a configured issuer signed it with an asymmetric key from
its published JWKS (found by RFC 8414 / OpenID discovery), it names this resource in ``aud``
(RFC 8707), it is within ``nbf``/``exp`` and it carries the required scopes.  Keys come only from
the issuer's ``jwks_uri``, never from the token's header (``jwk``/``jku``/``x5c`` are ignored).
Network fetches are async (httpx2) so a slow IdP never blocks other callers.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from mcp_guard.config import OAuthIssuerConfig
from mcp_guard.identity import Principal

# asymmetric JWS algorithms only: never "none", never HMAC (a public key must not double as a secret)
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY = 30.0  # seconds of clock skew tolerated on exp/nbf/iat
REFETCH_EVERY = 30.0  # an unknown kid refetches the JWKS at most this often (per issuer)
RETRY_AFTER = 5.0  # after a failed fetch, the IdP is not asked again for this long
METADATA_TTL = 3600.0
FETCH_TIMEOUT = 10.0
VERIFIED_TTL = 60.0  # a verified access token is not checked again for this long (never past its exp)
VERIFIED_MAX = 4096  # verified tokens remembered, least recently used dropped first
MAX_ACTORS = 16  # the deepest RFC 8693 `act` chain accepted; a deeper one is refused, never cut


class OAuthError(Exception):
    """A refused token: ``status`` 401 (invalid_token / invalid_request) or 403 (insufficient_scope)."""

    def __init__(self, status: int, error: str, description: str, scope: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.scope = scope


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified access token: whose it is, which issuer vouched for it, what it may do."""

    principal: Principal
    issuer: str
    scopes: tuple[str, ...]
    claims: dict[str, Any]


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts: an OAuth access token, not a grant chain (``~``-separated links)."""
    return token.count(".") == 2 and "~" not in token


def discovery_urls(issuer: str) -> list[str]:
    """RFC 8414 (well-known inserted before the issuer's path) first, then OpenID Connect discovery."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [f"{origin}/.well-known/oauth-authorization-server{path}", f"{origin}{path}/.well-known/openid-configuration"]


def principal_from_claims(cfg: OAuthIssuerConfig, claims: dict[str, Any]) -> Principal:
    """User from ``cfg.user``; agents from the RFC 8693 ``act`` chain (earliest actor first), else
    from ``cfg.agent`` / ``client_id`` / ``azp``."""
    user = claims.get(cfg.user)
    if not isinstance(user, str) or not user:
        raise OAuthError(401, "invalid_token", f"the access token has no `{cfg.user}` claim naming the user")
    actors: list[str] = []
    act = claims.get("act")
    while isinstance(act, dict):
        if len(actors) == MAX_ACTORS:  # refused whole: cutting it would drop the chain's origin from the audit
            raise OAuthError(401, "invalid_token", f"the access token's `act` chain is deeper than {MAX_ACTORS} actors")
        sub = act.get("sub") or act.get("client_id")
        if not isinstance(sub, str) or not sub:
            raise OAuthError(401, "invalid_token", "the access token's `act` claim names no actor (`sub`)")
        actors.append(sub)
        act = act.get("act")
    actors.reverse()  # the outermost act is the current actor; nested ones acted before it
    if not actors:
        names = [cfg.agent] if cfg.agent else ["client_id", "azp"]
        agent = next((v for n in names if isinstance(v := claims.get(n), str) and v), None)
        if agent is None:
            raise OAuthError(401, "invalid_token", f"the access token has no `{'` or `'.join(names)}` claim naming the agent")
        actors = [agent]
    purpose = claims.get(cfg.purpose) if cfg.purpose else None
    jti = claims.get("jti")
    return Principal(
        user=user,
        agents=tuple(actors),
        purpose=purpose if isinstance(purpose, str) else None,
        verified=True,
        grant_id=f"oauth:{jti}" if isinstance(jti, str) else None,
    )


def token_scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    """``scope`` (space-separated, RFC 9068) or ``scp`` (a list or a string, common IdPs)."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return tuple(raw.split())
    if isinstance(raw, list):
        return tuple(s for s in raw if isinstance(s, str))
    return ()


@dataclass(frozen=True, slots=True)
class _Key:
    jwk: jwt.PyJWK
    alg: str | None  # the JWK's own ``alg``, when it names one


class _Issuer:
    """One trusted authorization server: its discovered ``jwks_uri`` and cached signing keys."""

    def __init__(self, cfg: OAuthIssuerConfig) -> None:
        self.cfg = cfg
        self.jwks_uri: str | None = None
        self.metadata_at = 0.0
        self.keys: dict[str, _Key] = {}
        self.refetched_at = float("-inf")  # last fetch an unknown kid caused
        self.failed_at = float("-inf")  # last failed fetch: the IdP is not asked again for RETRY_AFTER
        self.lock = asyncio.Lock()

    async def _get_json(self, url: str) -> dict[str, Any]:
        import httpx2

        try:
            async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as http:
                res = await http.get(url, headers={"Accept": "application/json"})
            if res.status_code != 200:
                raise OAuthError(401, "invalid_token", f"{url} answered HTTP {res.status_code}")
            data = res.json()
        except (httpx2.HTTPError, httpx2.InvalidURL, ValueError) as exc:  # the IdP is down or answers garbage
            raise OAuthError(401, "invalid_token", f"{url} failed: {exc}") from None
        if not isinstance(data, dict):
            raise OAuthError(401, "invalid_token", f"{url} did not answer a JSON object")
        return data

    async def _discover(self) -> str:
        if self.jwks_uri and time.monotonic() - self.metadata_at < METADATA_TTL:
            return self.jwks_uri
        problems: list[str] = []
        for url in discovery_urls(self.cfg.issuer):
            try:
                meta = await self._get_json(url)
            except OAuthError as exc:  # try the next document
                problems.append(f"{url}: {exc}")
                continue
            if meta.get("issuer") != self.cfg.issuer:
                problems.append(f"{url} names issuer {meta.get('issuer')!r}, not {self.cfg.issuer}")
                continue
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str) or urlsplit(uri).scheme not in ("https", "http"):
                problems.append(f"{url} has no jwks_uri")
                continue
            if urlsplit(uri).scheme == "http" and urlsplit(self.cfg.issuer).scheme != "http":
                problems.append(f"{url}: jwks_uri {uri} is not https")
                continue
            self.jwks_uri, self.metadata_at = uri, time.monotonic()
            return uri
        raise OAuthError(401, "invalid_token", f"cannot discover the signing keys of {self.cfg.issuer} ({'; '.join(problems)})")

    async def key(self, kid: str | None) -> _Key:
        """The key named ``kid`` (or the only key when the token names none); an unknown kid
        refetches the JWKS, at most once per ``REFETCH_EVERY`` seconds."""
        async with self.lock:
            found = self._pick(kid)
            first = not self.keys
            if found is None and time.monotonic() - self.failed_at < RETRY_AFTER:
                raise OAuthError(401, "invalid_token", f"the signing keys of {self.cfg.issuer} could not be fetched a moment ago")
            if found is None and (first or time.monotonic() - self.refetched_at >= REFETCH_EVERY):
                if not first:
                    self.refetched_at = time.monotonic()
                try:
                    jwks = await self._get_json(await self._discover())
                except OAuthError:  # the IdP is down or answers garbage: refuse, never allow
                    self.failed_at = time.monotonic()
                    raise
                keys: dict[str, _Key] = {}
                for i, k in enumerate(jwks.get("keys") or []):
                    if not isinstance(k, dict) or k.get("use", "sig") != "sig" or k.get("kty") == "oct":
                        continue
                    try:
                        keys[str(k.get("kid", f"#{i}"))] = _Key(jwt.PyJWK.from_dict(k), k.get("alg"))
                    except jwt.PyJWTError:
                        continue  # an algorithm this build does not support: skip that key only
                self.keys = keys
                found = self._pick(kid)
        if found is None:
            raise OAuthError(401, "invalid_token", f"no signing key {kid!r} is published by {self.cfg.issuer}")
        return found

    def _pick(self, kid: str | None) -> _Key | None:
        if kid is not None:
            return self.keys.get(kid)
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None


class OAuthVerifier:
    """Verifies bearer JWT access tokens against the configured ``serve.oauth`` issuers."""

    def __init__(self, issuers: tuple[OAuthIssuerConfig, ...]) -> None:
        self.issuers = {cfg.issuer: _Issuer(cfg) for cfg in issuers}
        # token -> (its verified answer, until when it stands): a signature check costs more than the
        # rest of a call's mediation, and a client sends the same token with every request
        self._verified: OrderedDict[str, tuple[AccessToken, float]] = OrderedDict()

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every scope some issuer requires (``scopes_supported`` in the metadata, ``scope`` in challenges)."""
        return tuple(dict.fromkeys(s for i in self.issuers.values() for s in i.cfg.scopes))

    async def verify(self, token: str) -> AccessToken:
        now = time.time()
        hit = self._verified.get(token)
        if hit is not None:
            if now < hit[1]:
                self._verified.move_to_end(token)
                return hit[0]
            del self._verified[token]
        access = await self._verify(token)
        exp = access.claims.get("exp")
        if isinstance(exp, int | float):
            self._verified[token] = (access, min(float(exp), now + VERIFIED_TTL))
            if len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)
        return access

    async def _verify(self, token: str) -> AccessToken:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError(401, "invalid_token", "the bearer token is neither a grant chain nor a JWT access token") from None
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise OAuthError(401, "invalid_token", f"the access token's issuer {iss!r} is not trusted here")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OAuthError(401, "invalid_token", f"the access token is signed with {alg!r}; only asymmetric algorithms are accepted")
        kid = header.get("kid")
        key = await issuer.key(kid if isinstance(kid, str) else None)  # PyJWT checks the key type against alg
        if key.alg is not None and key.alg != alg:
            raise OAuthError(401, "invalid_token", f"key {kid!r} is for {key.alg}, not {alg}")
        cfg = issuer.cfg
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"], "verify_iat": True},
            )
        except jwt.ExpiredSignatureError:
            raise OAuthError(401, "invalid_token", "the access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise OAuthError(401, "invalid_token", "the access token is not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise OAuthError(401, "invalid_token", f"the access token was not issued for this resource ({cfg.audience})") from None
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_token", f"the access token is invalid: {exc}") from None
        scopes = token_scopes(claims)
        missing = [s for s in cfg.scopes if s not in scopes]
        if missing:
            raise OAuthError(403, "insufficient_scope", f"the access token lacks the scope {' '.join(missing)}", " ".join(cfg.scopes))
        return AccessToken(principal_from_claims(cfg, claims), cfg.issuer, scopes, claims)
