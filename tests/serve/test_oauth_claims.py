"""The pure parts of serve's OAuth resource server: discovery URLs, scopes, claims -> principal."""

from __future__ import annotations

import pytest

from mcp_guard.config import OAuthIssuerConfig
from mcp_guard.serve.oauth import OAuthError, discovery_urls, principal_from_claims, token_scopes
from mcp_guard.serve.resource import resource_metadata_url

CFG = OAuthIssuerConfig(issuer="https://idp.example.com", audience="https://guard.example.com/mcp")


def test_discovery_urls_follow_rfc8414_then_openid() -> None:
    assert discovery_urls("https://idp.example.com/tenant/1") == [
        "https://idp.example.com/.well-known/oauth-authorization-server/tenant/1",
        "https://idp.example.com/tenant/1/.well-known/openid-configuration",
    ]
    assert discovery_urls("https://idp.example.com/")[0] == "https://idp.example.com/.well-known/oauth-authorization-server"


def test_resource_metadata_url_inserts_the_well_known_before_the_path() -> None:
    assert resource_metadata_url("https://guard.example.com/mcp") == "https://guard.example.com/.well-known/oauth-protected-resource/mcp"


@pytest.mark.parametrize(("claims", "scopes"), [
    ({"scope": "mcp  read"}, ("mcp", "read")), ({"scp": ["mcp", 3]}, ("mcp",)), ({"scp": "a b"}, ("a", "b")), ({}, ()),
])
def test_scopes(claims: dict[str, object], scopes: tuple[str, ...]) -> None:
    assert token_scopes(claims) == scopes


def test_principal_from_plain_claims() -> None:
    who = principal_from_claims(CFG, {"sub": "alice", "client_id": "planner", "jti": "j1"})
    assert who.chain == ("user:alice", "agent:planner") and who.verified and who.grant_id == "oauth:j1"
    assert principal_from_claims(CFG, {"sub": "alice", "azp": "spa"}).agents == ("spa",)
    custom = OAuthIssuerConfig(issuer="i", audience="a", user="email", agent="app", purpose="why")
    who = principal_from_claims(custom, {"email": "a@x", "app": "bot", "why": "triage", "client_id": "ignored"})
    assert (who.user, who.agents, who.purpose) == ("a@x", ("bot",), "triage")


def test_an_act_chain_lists_the_earliest_actor_first() -> None:
    who = principal_from_claims(CFG, {"sub": "bob", "client_id": "coder", "act": {"sub": "coder", "act": {"sub": "planner"}}})
    assert who.chain == ("user:bob", "agent:planner", "agent:coder")


@pytest.mark.parametrize("claims", [{"client_id": "x"}, {"sub": ""}, {"sub": "bob"}, {"sub": "bob", "act": {"act": {"sub": "x"}}}])
def test_claims_that_name_no_principal_are_refused(claims: dict[str, object]) -> None:
    with pytest.raises(OAuthError) as err:
        principal_from_claims(CFG, claims)
    assert err.value.status == 401 and err.value.error == "invalid_token"


async def test_a_verified_access_token_is_remembered_until_its_expiry_at_most_a_minute() -> None:
    """The signature is checked once per token; the answer stands for a minute, never past ``exp``,
    and a token that was refused is checked again every time."""
    import json
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mcp_guard.serve import oauth as oauth_mod

    key = Ed25519PrivateKey.generate()
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    verifier = oauth_mod.OAuthVerifier((CFG,))
    verifier.issuers[CFG.issuer].keys["k1"] = oauth_mod._Key(jwt.PyJWK({**public, "kid": "k1"}, "EdDSA"), None)
    verifier.issuers[CFG.issuer].metadata_at = time.monotonic()
    checks = 0
    real = verifier._verify

    async def counted(token: str) -> oauth_mod.AccessToken:
        nonlocal checks
        checks += 1
        return await real(token)

    verifier._verify = counted  # type: ignore[method-assign]

    def token(exp: float, **extra: object) -> str:
        claims = {"iss": CFG.issuer, "aud": CFG.audience, "sub": "alice", "client_id": "planner", "exp": int(exp), **extra}
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "k1"})

    good = token(time.time() + 3600)
    for _ in range(3):
        assert (await verifier.verify(good)).principal.user == "alice"
    assert checks == 1
    verifier._verified[good] = (verifier._verified[good][0], time.time() - 1)  # its minute is over
    await verifier.verify(good)
    assert checks == 2
    soon = token(time.time() + 2)
    await verifier.verify(soon)
    assert verifier._verified[soon][1] <= time.time() + 2  # never remembered past its exp
    wrong_audience = token(time.time() + 3600, aud="https://other.example.com")
    for _ in range(2):
        with pytest.raises(OAuthError):
            await verifier.verify(wrong_audience)
    assert checks == 5


def _acts(depth: int) -> dict[str, object]:
    act: dict[str, object] = {"sub": "a0"}
    for i in range(1, depth):
        act = {"sub": f"a{i}", "act": act}
    return act


@pytest.mark.parametrize("depth", [17, 40, 500])
def test_an_act_chain_deeper_than_supported_is_refused_whole(depth: int) -> None:
    with pytest.raises(OAuthError, match="deeper than 16 actors") as err:
        principal_from_claims(CFG, {"sub": "bob", "act": _acts(depth)})
    assert err.value.status == 401


def test_an_act_chain_of_the_supported_depth_is_kept_whole() -> None:
    who = principal_from_claims(CFG, {"sub": "bob", "act": _acts(16)})
    assert who.agents == tuple(f"a{i}" for i in range(16))  # the origin actor a0 first, nothing cut


def test_session_keys_cannot_be_spelled_by_a_claim() -> None:
    """The binding is canonical JSON of the parts: a user claim reading like a chain is another principal."""
    from mcp_guard.identity import Principal
    from mcp_guard.serve.binding import principal_key, root_key, session_binding

    real = Principal("alice@example.com", ("planner", "coder"), verified=True)
    forged = Principal("alice@example.com > agent:planner", ("coder",), verified=True)
    assert session_binding("https://idp", real) != session_binding("https://idp", forged)
    assert principal_key(real) != principal_key(forged) and root_key("https://idp", real, None) != root_key("https://idp", forged, None)
    support, browsing = Principal("dana", ("helper",), "support", True), Principal("dana", ("helper",), "browsing", True)
    assert session_binding("https://idp", support) != session_binding("https://idp", browsing)
    assert session_binding("https://idp", support) != session_binding("https://other", support)
    sub = Principal("alice@example.com", ("planner", "coder", "sub7"), verified=True)
    assert root_key("https://idp", sub, None) == root_key("https://idp", real, None)  # one delegating root
