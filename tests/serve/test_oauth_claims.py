"""The pure parts of serve's OAuth resource server: discovery URLs, scopes, claims -> principal."""

from __future__ import annotations

import pytest

from mcp_guard.config import OAuthIssuerConfig
from mcp_guard.transports.http import resource_metadata_url
from mcp_guard.transports.oauth import OAuthError, discovery_urls, principal_from_claims, token_scopes

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
