"""The guard as an OAuth 2.1 client toward an HTTP upstream that requires authorization.

The protocol work (RFC 9728 / 8414 / OIDC discovery, client ID metadata documents, dynamic
registration, PKCE S256, RFC 8707 ``resource``, RFC 9207 ``iss``, refresh, step-up on
``insufficient_scope``) is the ``mcp`` SDK's own ``OAuthClientProvider`` and
``ClientCredentialsOAuthProvider``: one implementation the MCP project tests against its own
conformance suite.  This module adds what a long-running gateway needs around it:

* ``TokenStore``: tokens, the client registration and the discovered metadata, per user and per
  upstream, Fernet-encrypted in a 0600 file (key in a 0600 file beside it), bound to the upstream
  URL so a changed ``url:`` never receives another server's token;
* ``CheckedTransport``: every request the client makes (discovery, registration, token, and the
  redirects the SDK follows) is refused unless it is HTTPS (plain HTTP only to loopback) and
  resolves to public addresses, unless the configured upstream itself is on a private or loopback
  address;
* the loopback redirect listener and the browser, and the non-interactive rule: a guard started
  by a desktop host never waits on a person unless ``$BROWSER`` says one is there; it fails the
  upstream with "run `mcp-guard login NAME`" instead;
* refresh a minute before expiry, also across restarts (the SDK alone forgets expiry and metadata).

Tokens never leave this module except as the ``Authorization`` header of requests to the
upstream: they are not logged, audited or put on spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import tempfile
import time
import webbrowser
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from cryptography.fernet import Fernet, InvalidToken
from mcp.client.auth import OAuthClientProvider, TokenStorage
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
from mcp_guard.config import ClientCredentialsConfig, OAuthConfig, UpstreamConfig
from mcp_guard.errors import UpstreamError

log = logging.getLogger("mcp_guard.upstream.oauth")
# The SDK logs every failed flow with a traceback; the guard reports the one-sentence reason itself.
logging.getLogger("mcp.client.auth").setLevel(logging.CRITICAL)

REFRESH_MARGIN = 60.0  # refresh this long before the access token expires
CALLBACK_TIMEOUT = 300.0  # how long a login waits on the person at the browser
MAX_AUTHORIZATIONS = 3  # full authorizations per upstream per ten minutes (step-up loops end here)
_AUTHORIZATIONS: dict[Path, list[float]] = {}  # per token file, across reconnects of one process
CALLBACK_PATH = "/callback"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class LoginRequired(UpstreamError):
    """The upstream needs a person to authorize, and nobody is there (run without ``$BROWSER``)."""


class AuthRefused(UpstreamError):
    """Discovery or a token exchange went somewhere (or returned something) the guard refuses."""


# --------------------------------------------------------------------------- storage


def _write_private(path: Path, data: bytes) -> None:
    """Atomic replace, mode 0600, directory 0700: tokens are never readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _key(directory: Path) -> Fernet:
    """The machine's token key (``key`` in the tokens directory), created on first use with mode 0600."""
    path = directory / "key"
    try:
        return Fernet(path.read_bytes().strip())
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Fernet.generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return Fernet(path.read_bytes().strip())
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return Fernet(key)
    except (OSError, ValueError) as exc:
        raise UpstreamError(f"the token key {path} is unreadable ({exc}); delete it and log in again") from None


class TokenStore(TokenStorage):
    """One upstream's tokens for one user: ``tokens/<user>/<upstream>.token``, encrypted."""

    def __init__(self, path: Path, url: str, fixed_client: OAuthClientInformationFull | None = None) -> None:
        self.path = path
        self.url = url
        self.fixed_client = fixed_client  # a pre-registered client from guard.yaml, never stored

    def load(self) -> dict[str, Any]:
        """The decrypted record, or {} when there is none (or it belongs to another URL / key)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UpstreamError(f"cannot read the stored token {self.path}: {exc.strerror or exc}") from None
        try:
            record = json.loads(_key(self.path.parent.parent).decrypt(blob))
        except (InvalidToken, ValueError):
            log.warning("stored token %s cannot be decrypted with this machine's key; ignoring it", self.path)
            return {}
        if not isinstance(record, dict) or record.get("url") != self.url:
            return {}  # issued for another upstream URL: never sent to this one
        return record

    def save(self, **fields: Any) -> None:
        record = self.load() or {"url": self.url}
        record.update(fields)
        _write_private(self.path, _key(self.path.parent.parent).encrypt(json.dumps(record).encode()))

    def clear(self) -> bool:
        """Forget everything stored for this upstream; False when nothing was stored."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    async def get_tokens(self) -> OAuthToken | None:
        raw = self.load().get("tokens")
        return OAuthToken.model_validate(raw) if raw else None

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.save(tokens=tokens.model_dump(mode="json", exclude_none=True))

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        if self.fixed_client is not None:
            return self.fixed_client
        raw = self.load().get("client")
        return OAuthClientInformationFull.model_validate(raw) if raw else None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        if self.fixed_client is None:
            self.save(client=client_info.model_dump(mode="json", exclude_none=True))


# --------------------------------------------------------------------------- SSRF-safe transport


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


# --------------------------------------------------------------------------- loopback redirect


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
        except Exception as exc:
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


def _redirect_uri(auth: OAuthConfig, store: TokenStore) -> str:
    """The configured URI, else the one a stored registration was made with, else a free port."""
    if auth.redirect_uri:
        return auth.redirect_uri
    client = store.load().get("client") or {}
    for uri in client.get("redirect_uris") or []:
        u = urlsplit(str(uri))
        if u.scheme == "http" and u.hostname in LOOPBACK_HOSTS and u.port:
            return str(uri)
    return f"http://127.0.0.1:{_free_port()}{CALLBACK_PATH}"


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
    redirect = _redirect_uri(auth, store)
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
