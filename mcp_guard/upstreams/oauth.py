"""The guard as an OAuth 2.1 client toward an HTTP upstream that requires authorization.

The protocol work (RFC 9728 / 8414 / OIDC discovery, client ID metadata documents, dynamic
registration, PKCE S256, RFC 8707 ``resource``, RFC 9207 ``iss``, refresh, step-up on
``insufficient_scope``) is the ``mcp`` SDK's own ``OAuthClientProvider`` and
``ClientCredentialsOAuthProvider``: one implementation the MCP project tests against its own
conformance suite.  This module adds what a long-running gateway needs around it:

* ``oauth_store.TokenStore``: tokens, the client registration and the discovered metadata, per
  user and per upstream, encrypted at rest and bound to the upstream URL;
* ``oauth_transport.CheckedTransport``: no request of the flow goes where a hostile upstream aims
  it (only HTTPS, only public addresses, unless the upstream itself is local);
* ``oauth_redirect``: the loopback redirect listener; here, the browser and the non-interactive
  rule: a guard started by a desktop host never waits on a person unless ``$BROWSER`` says one is
  there; it fails the upstream with "run `mcp-guard login NAME`" instead;
* refresh a minute before expiry, also across restarts (the SDK alone forgets expiry and metadata).

Tokens never leave these modules except as the ``Authorization`` header of requests to the
upstream: they are not logged, audited or put on spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import webbrowser
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.auth.utils import union_scopes
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT, create_mcp_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthMetadata,
    OAuthToken,
    ProtectedResourceMetadata,
)
from pydantic import AnyUrl, ValidationError

from mcp_guard import __version__
from mcp_guard.config import LOOPBACK_HOSTS, ClientCredentialsConfig, OAuthConfig, UpstreamConfig
from mcp_guard.errors import AuthRefused, LoginRequired, UpstreamError
from mcp_guard.upstreams.oauth_redirect import LoopbackCallback, redirect_uri
from mcp_guard.upstreams.oauth_store import TokenStore
from mcp_guard.upstreams.oauth_transport import CheckedTransport

log = logging.getLogger("mcp_guard.upstream.oauth")
# The SDK logs every failed flow with a traceback; the guard reports the one-sentence reason itself.
logging.getLogger("mcp.client.auth").setLevel(logging.CRITICAL)

REFRESH_MARGIN = 60.0  # refresh this long before the access token expires
CALLBACK_TIMEOUT = 300.0  # how long a login waits on the person at the browser
MAX_AUTHORIZATIONS = 3  # full authorizations per upstream per ten minutes (step-up loops end here)
_AUTHORIZATIONS: dict[Path, list[float]] = {}  # per token file, across reconnects of one process


# --------------------------------------------------------------------------- providers


class _GuardFlow:
    """What the guard adds to either SDK provider (mixed in before it)."""

    context: Any
    _initialized: bool
    name: str
    store: TokenStore
    scopes: tuple[str, ...]
    failure: str | None
    may_authorize: bool

    def _setup(self, name: str, store: TokenStore, scopes: tuple[str, ...], may_authorize: bool) -> None:
        self.name = name
        self.store = store
        self.scopes = scopes
        self.failure = None
        self.may_authorize = may_authorize  # False: a person would be needed and none is there

    async def _initialize(self) -> None:
        """The SDK reloads tokens and client; the guard also reloads expiry and metadata, so a
        restarted guard refreshes at the right token endpoint instead of starting over."""
        await super()._initialize()  # type: ignore[misc]
        record = self.store.load()
        expires = record.get("expires_at")
        self.context.token_expiry_time = float(expires) if isinstance(expires, int | float) else None
        with contextlib.suppress(ValidationError, TypeError):
            if record.get("prm"):
                self.context.protected_resource_metadata = ProtectedResourceMetadata.model_validate(record["prm"])
            if record.get("metadata"):
                self.context.oauth_metadata = OAuthMetadata.model_validate(record["metadata"])
            if record.get("auth_server_url"):
                self.context.auth_server_url = str(record["auth_server_url"])

    def _remember(self) -> None:
        """Refresh ``REFRESH_MARGIN`` early, and keep what a restart needs to do so."""
        ctx = self.context
        tokens = ctx.current_tokens
        if tokens is not None and tokens.expires_in is not None:
            ctx.token_expiry_time = time.time() + max(0.0, float(tokens.expires_in) - min(REFRESH_MARGIN, tokens.expires_in / 10))
        self.store.save(
            expires_at=ctx.token_expiry_time,
            prm=ctx.protected_resource_metadata.model_dump(mode="json", exclude_none=True) if ctx.protected_resource_metadata else None,
            metadata=ctx.oauth_metadata.model_dump(mode="json", exclude_none=True) if ctx.oauth_metadata else None,
            auth_server_url=ctx.auth_server_url,
        )

    async def _handle_token_response(self, response: httpx2.Response) -> None:
        await super()._handle_token_response(response)  # type: ignore[misc]
        self._remember()

    async def _handle_refresh_response(self, response: httpx2.Response) -> bool:
        ok = bool(await super()._handle_refresh_response(response))  # type: ignore[misc]
        if ok:
            self._remember()
        else:  # refused (revoked, expired): never offer it again, also not after a restart
            self.store.save(tokens=None, expires_at=None)
        return ok

    async def _perform_authorization(self) -> httpx2.Request:
        """Every full authorization: only with someone to ask, within the retry limit, and asking
        for the configured scopes too."""
        if not self.may_authorize:
            # remember what the upstream asked for (a step-up's scopes), so the next login asks for it too
            wanted = self.context.client_metadata.scope
            if wanted and wanted != self.store.load().get("wanted_scope"):
                self.store.save(wanted_scope=wanted)
            raise LoginRequired(f"needs authorization: run `mcp-guard login {self.name}` first")
        now = time.monotonic()
        recent = [t for t in _AUTHORIZATIONS.get(self.store.path, []) if now - t < 600.0] + [now]
        _AUTHORIZATIONS[self.store.path] = recent
        if len(recent) > MAX_AUTHORIZATIONS:
            raise AuthRefused(f"authorized {MAX_AUTHORIZATIONS} times in ten minutes and the upstream still refuses; giving up")
        wanted = union_scopes(" ".join(self.scopes) or None, self.store.load().get("wanted_scope"))
        if wanted:
            self.context.client_metadata.scope = union_scopes(self.context.client_metadata.scope, wanted)
        return await super()._perform_authorization()  # type: ignore[misc, no-any-return]

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """The SDK flow, with every failure turned into one sentence kept for the upstream's status."""
        flow = super().async_auth_flow(request)  # type: ignore[misc]
        try:
            outgoing = await flow.__anext__()
            while True:
                response = yield outgoing
                outgoing = await flow.asend(response)
        except StopAsyncIteration:
            self.failure = None
            return
        except UpstreamError as exc:
            self.failure = str(exc)
            raise
        except Exception as exc:  # library edge: whatever the SDK's flow raises is refused in one sentence
            self.failure = f"authorization failed: {_reason(exc)}"
            raise AuthRefused(self.failure) from None
        finally:
            await flow.aclose()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"


class GuardOAuthProvider(_GuardFlow, OAuthClientProvider):
    """Authorization code + PKCE with a loopback redirect (``auth: {oauth: …}``)."""


class GuardClientCredentialsProvider(_GuardFlow, ClientCredentialsOAuthProvider):
    """The client credentials grant (``auth: {client_credentials: …}``)."""


Notify = Callable[[str], None]
GuardProvider = GuardOAuthProvider | GuardClientCredentialsProvider


def _open_browser(url: str) -> None:
    with contextlib.suppress(Exception):
        webbrowser.open(url)


def build_auth(config: UpstreamConfig, *, interactive: bool | None = None, notify: Notify | None = None,
               wait: float = CALLBACK_TIMEOUT, open_browser: bool | None = None) -> GuardProvider | None:
    """The ``httpx2.Auth`` for an upstream's ``auth:`` (None when it has none).

    ``interactive`` None means: only when ``$BROWSER`` is set (``run``); ``login`` passes True.
    ``notify`` shows the authorization URL (stderr by default); ``open_browser`` (default: when
    ``$BROWSER`` is set) also opens it, through ``$BROWSER`` or the desktop's browser.
    """
    auth = config.auth
    if auth is None or config.url is None or config.token_file is None:
        return None
    say = notify or (lambda text: log.warning("%s", text))
    fixed = None
    if isinstance(auth, OAuthConfig) and auth.client_id:
        fixed = OAuthClientInformationFull(
            client_id=auth.client_id,
            client_secret=auth.client_secret,
            token_endpoint_auth_method="client_secret_basic" if auth.client_secret else "none",
            redirect_uris=[AnyUrl(auth.redirect_uri)] if auth.redirect_uri else None,
        )
    store = TokenStore(Path(config.token_file), config.url, fixed)
    if isinstance(auth, ClientCredentialsConfig):
        cc = GuardClientCredentialsProvider(
            server_url=config.url, storage=store, client_id=auth.client_id, client_secret=auth.client_secret,
            scope=" ".join(auth.scopes) or None, issuer=auth.issuer,
        ) if auth.issuer else _quiet_client_credentials(config.url, store, auth)
        cc._setup(config.name, store, auth.scopes, True)
        return cc

    may_ask = interactive if interactive is not None else config.browser is not None
    launch = open_browser if open_browser is not None else config.browser is not None
    redirect = redirect_uri(auth, store)
    if fixed is not None and fixed.redirect_uris is None:
        fixed.redirect_uris = [AnyUrl(redirect)]
    listener = LoopbackCallback(urlsplit(redirect).hostname or "127.0.0.1", urlsplit(redirect).port or 0)
    name = config.name

    async def redirect_handler(url: str) -> None:
        target = urlsplit(url)
        if target.scheme != "https" and not (target.scheme == "http" and target.hostname in LOOPBACK_HOSTS):
            raise AuthRefused(f"refused to open the authorization page {target.scheme}://{target.netloc}{target.path}: only https is allowed")
        await listener.start()
        say(f"Authorize mcp-guard for upstream {name} by opening:\n  {url}")
        if launch:
            asyncio.get_running_loop().run_in_executor(None, _open_browser, url)

    async def callback_handler() -> AuthorizationCodeResult:
        params = await listener.wait(wait)
        if "error" in params:
            detail = (params.get("error_description") or params["error"])[:200]
            raise AuthRefused(f"the authorization server refused: {detail}")
        if not params.get("code"):
            raise AuthRefused("the authorization redirect carried no code")
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    provider = GuardOAuthProvider(
        server_url=config.url,
        client_metadata=OAuthClientMetadata(
            client_name=f"mcp-guard ({name})",
            client_uri=None,
            software_id="mcp-guard",
            software_version=__version__,
            redirect_uris=[AnyUrl(redirect)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            scope=" ".join(auth.scopes) or None,
        ),
        storage=store,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=auth.client_metadata_url,
    )
    provider._setup(name, store, auth.scopes, may_ask)
    return provider


def _quiet_client_credentials(url: str, store: TokenStore, auth: ClientCredentialsConfig) -> GuardClientCredentialsProvider:
    """Without a configured ``issuer`` the SDK warns on every start; the guard documents the option instead."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GuardClientCredentialsProvider(
            server_url=url, storage=store, client_id=auth.client_id, client_secret=auth.client_secret,
            scope=" ".join(auth.scopes) or None,
        )


def http_client(config: UpstreamConfig, auth: GuardProvider | None) -> httpx2.AsyncClient:
    """The upstream's HTTP client: the SDK's timeouts, static headers, and with ``auth`` the checked transport."""
    if auth is None:
        return create_mcp_http_client(headers=dict(config.headers))
    assert config.url is not None
    timeout = httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)

    def refused(reason: str) -> None:
        auth.failure = reason

    transport = CheckedTransport(config.url, on_refuse=refused)
    return httpx2.AsyncClient(timeout=timeout, headers=dict(config.headers), auth=auth, transport=transport)


async def login(config: UpstreamConfig, notify: Notify, wait: float = CALLBACK_TIMEOUT, open_browser: bool = True) -> OAuthToken:
    """Run the flow now (``mcp-guard login``): ``initialize`` and ``tools/list``, as a later ``run``
    begins, make the SDK discover, register and authorize exactly as that run would (a server may
    leave ``initialize`` open and protect only what follows)."""
    provider = build_auth(config, interactive=True, notify=notify, wait=wait, open_browser=open_browser)
    if provider is None:
        raise UpstreamError(f"upstream {config.name} has no `auth: oauth` or `auth: client_credentials` to log in with")
    assert config.url is not None
    provider.store.save(tokens=None, expires_at=None)  # a login always asks again
    version = "2025-11-25"
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": version}
    init = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "mcp-guard", "version": __version__}}
    probes = [("initialize", 1, init), ("notifications/initialized", None, None), ("tools/list", 2, {})]
    async with http_client(config, provider) as client:
        for method, rid, params in probes:
            body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
            if rid is not None:
                body.update(id=rid, params=params)
            try:
                response = await client.post(config.url, json=body, headers=headers)
            except httpx2.TransportError as exc:
                raise UpstreamError(f"upstream {config.name} at {config.url} is unreachable: {exc}") from None
            if response.status_code in (401, 403):
                raise AuthRefused(f"upstream {config.name} still answers {response.status_code} after authorization")
            if response.headers.get("mcp-session-id"):
                headers["mcp-session-id"] = response.headers["mcp-session-id"]
        if "mcp-session-id" in headers:  # end the session the probe opened
            with contextlib.suppress(httpx2.HTTPError):
                await client.delete(config.url, headers=headers)
    tokens = await provider.store.get_tokens()
    if tokens is None:
        raise AuthRefused(f"upstream {config.name} did not ask for authorization, so there is nothing to store")
    return tokens


def logout(config: UpstreamConfig) -> bool:
    """Forget the stored tokens (and registration) for this user and upstream."""
    if config.token_file is None:
        raise UpstreamError(f"upstream {config.name} has no `auth: oauth` or `auth: client_credentials`")
    return TokenStore(Path(config.token_file), config.url or "").clear()
