"""The guard's OAuth client pieces around the SDK: SSRF-safe discovery, the token store, scopes.

The hostile-discovery test drives the SDK's real flow through the guard's transport; the upstream
(a public address that cannot be reached from a test) is an in-memory stand-in answering 401.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx2
import pytest
from mcp.shared.auth import OAuthToken

from mcp_guard.config import parse_config
from mcp_guard.errors import AuthRefused
from mcp_guard.upstreams.oauth import build_auth, http_client
from mcp_guard.upstreams.oauth_store import TokenStore
from mcp_guard.upstreams.oauth_transport import CheckedTransport

PUBLIC = "https://93.184.215.14/mcp"  # a public address literal: no DNS needed


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("https://10.0.0.7/.well-known/oauth-protected-resource", "private or loopback"),
        ("https://169.254.169.254/latest/meta-data", "private or loopback"),
        ("https://127.0.0.1:8443/token", "private or loopback"),
        ("https://[::1]/token", "private or loopback"),
        ("https://[fd00::1]/token", "private or loopback"),
        ("https://192.168.1.1/authorize", "private or loopback"),
        ("http://93.184.215.20/token", "only https"),
        ("http://127.0.0.1:9000/token", "only https"),
        ("ftp://93.184.215.20/x", "only https"),
    ],
)
async def test_discovery_from_a_public_upstream_refuses_private_and_plain_http_targets(target: str, why: str) -> None:
    with pytest.raises(AuthRefused) as refused:
        await CheckedTransport(PUBLIC).check(httpx2.URL(target))
    assert why in str(refused.value)
    assert "?" not in str(refused.value)  # no query string (it may carry state) in the message


async def test_public_https_targets_and_the_upstream_itself_are_allowed() -> None:
    transport = CheckedTransport(PUBLIC)
    await transport.check(httpx2.URL("https://93.184.215.20/.well-known/oauth-authorization-server"))
    await transport.check(httpx2.URL("https://93.184.215.14/.well-known/oauth-protected-resource/mcp"))


async def test_a_loopback_upstream_may_discover_on_loopback() -> None:
    transport = CheckedTransport("http://127.0.0.1:8000/mcp")
    await transport.check(httpx2.URL("http://localhost:9000/.well-known/oauth-authorization-server"))
    await transport.check(httpx2.URL("http://127.0.0.1:9000/token"))
    with pytest.raises(AuthRefused, match="only https"):
        await transport.check(httpx2.URL("http://93.184.215.20/token"))  # plain http off loopback: never


def _config(tmp_path: Path, auth: str, url: str = PUBLIC) -> object:
    text = f"version: 1\nupstreams:\n  up:\n    url: {url}\n    auth:\n{auth}\nstate:\n  url: sqlite:///state/state.db\n"
    return parse_config(text, str(tmp_path / "guard.yaml"), environ={"USER": "alice"}).upstreams["up"]


async def test_a_hostile_resource_metadata_url_is_never_fetched(tmp_path: Path) -> None:
    seen: list[str] = []

    def upstream(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        return httpx2.Response(401, headers={
            "WWW-Authenticate": 'Bearer resource_metadata="https://10.0.0.7/.well-known/oauth-protected-resource"'})

    config = _config(tmp_path, "      oauth: {}")
    auth = build_auth(config, interactive=False)  # type: ignore[arg-type]
    assert auth is not None
    client = http_client(config, auth)  # type: ignore[arg-type]
    transport = client._transport
    assert isinstance(transport, CheckedTransport)
    transport.inner = httpx2.MockTransport(upstream)
    async with client:
        with pytest.raises(AuthRefused):
            await client.post(PUBLIC, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert seen == [PUBLIC]  # only the upstream itself was contacted
    assert auth.failure is not None and "10.0.0.7" in auth.failure and "private or loopback" in auth.failure


async def test_authorization_servers_in_metadata_are_checked_too(tmp_path: Path) -> None:
    seen: list[str] = []

    def upstream(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        if request.url.path.startswith("/.well-known/oauth-protected-resource"):
            return httpx2.Response(200, json={"resource": PUBLIC, "authorization_servers": ["http://93.184.215.30/"]})
        return httpx2.Response(401, headers={"WWW-Authenticate": "Bearer"})

    config = _config(tmp_path, "      oauth: {}")
    auth = build_auth(config, interactive=False)  # type: ignore[arg-type]
    assert auth is not None
    client = http_client(config, auth)  # type: ignore[arg-type]
    assert isinstance(client._transport, CheckedTransport)
    client._transport.inner = httpx2.MockTransport(upstream)
    async with client:
        with pytest.raises(AuthRefused, match="only https"):
            await client.post(PUBLIC, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert all(u.startswith("https://93.184.215.14/") for u in seen)


async def test_token_store_is_encrypted_private_and_bound_to_the_upstream_url(tmp_path: Path) -> None:
    path = tmp_path / "tokens" / "alice" / "up.token"
    store = TokenStore(path, "https://a.example/mcp")
    await store.set_tokens(OAuthToken(access_token="secret-access-value", refresh_token="secret-refresh-value", expires_in=60))
    blob = path.read_bytes()
    assert b"secret-access-value" not in blob and b"secret-refresh-value" not in blob
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tokens" / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert (await store.get_tokens()) == OAuthToken(access_token="secret-access-value", refresh_token="secret-refresh-value", expires_in=60)
    # the same file read for another URL (guard.yaml's url changed): nothing is handed out
    assert await TokenStore(path, "https://b.example/mcp").get_tokens() is None
    # a file this machine's key cannot open (copied from elsewhere, tampered): ignored, not trusted
    path.write_bytes(blob[:-4] + b"AAAA")
    assert await store.get_tokens() is None
    assert store.clear() and not path.exists() and not store.clear()


def test_config_places_tokens_per_user_and_upstream_beside_the_state_db(tmp_path: Path) -> None:
    up = _config(tmp_path, "      client_credentials: {client_id: svc, client_secret: s3, scopes: [a, b], issuer: 'https://as.example'}")
    assert up.token_file == str(tmp_path / "state" / "tokens" / "alice" / "up.token")  # type: ignore[attr-defined]
    assert json.dumps(up.auth.scopes) == '["a", "b"]'  # type: ignore[attr-defined]
