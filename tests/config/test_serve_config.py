"""The ``serve:`` block of guard.yaml: OAuth issuers, token exchange, session and body limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.config import parse_config
from mcp_guard.errors import ConfigError
from mcp_guard.grants import write_keypair


def test_a_full_serve_block(tmp_path: Path) -> None:
    write_keypair(tmp_path / "keys")
    text = f"""\
version: 1
trust:
  issuers: {{guard: {tmp_path}/keys/public.jwk}}
serve:
  url: https://guard.example.com/mcp
  oauth:
    - issuer: https://idp.example.com
      scopes: [mcp]
      agent: azp
    - issuer: http://127.0.0.1:9000
      audience: https://other.example/mcp
  token_exchange: {{key: ./keys/private.pem, issuer: guard, ttl: 2h}}
  max_sessions_per_principal: 8
  session_idle: 10m
  max_body: 1024
  allowed_hosts: [guard.internal:8765]
"""
    serve = parse_config(text, str(tmp_path / "guard.yaml"), environ={}).serve
    assert serve.url == "https://guard.example.com/mcp"
    first, second = serve.oauth
    assert (first.audience, first.scopes, first.user, first.agent) == ("https://guard.example.com/mcp", ("mcp",), "sub", "azp")
    assert second.audience == "https://other.example/mcp" and second.agent is None
    assert serve.token_exchange is not None and serve.token_exchange.ttl == 7200 and serve.token_exchange.key == tmp_path / "keys/private.pem"
    assert (serve.max_sessions_per_principal, serve.session_idle, serve.max_body) == (8, 600, 1024)
    assert serve.allowed_hosts == ("guard.internal:8765",)


def test_serve_mistakes_are_reported_with_positions_and_hints(tmp_path: Path) -> None:
    text = """\
version: 1
serve:
  url: http://guard.example.com/mcp
  oauth:
    - issuer: http://idp.example.com
      scope: [mcp]
    - audiance: x
  token_exchange: {key: ./missing.pem, issuer: nobody}
  max_sessions_per_principal: 0
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, str(tmp_path / "guard.yaml"), environ={})
    problems = "\n".join(err.value.problems)
    assert "guard.yaml:3:8: `serve.url` must use https:// (http:// is accepted only on 127.0.0.1, localhost or ::1)" in problems
    assert "guard.yaml:5:15: `issuer` must use https://" in problems
    assert "guard.yaml:6:7: unknown key `scope` in serve.oauth entry (did you mean `scopes`?)" in problems
    assert "unknown key `audiance` in serve.oauth entry (did you mean `audience`?)" in problems
    assert "each serve.oauth entry needs `issuer`" in problems
    assert "issuer `nobody` must also be listed in trust.issuers" in problems
    assert "`max_sessions_per_principal` must be a positive integer" in problems


def test_oauth_needs_a_resource_uri(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("version: 1\nserve:\n  oauth:\n    - issuer: https://idp.example.com\n", str(tmp_path / "g.yaml"), environ={})
    assert "set `serve.url`" in "\n".join(err.value.problems)


def test_the_approval_page_block(tmp_path: Path) -> None:
    text = """\
version: 1
serve:
  url: https://guard.example.com/mcp
  oauth: [{issuer: https://idp.example.com, user: email}]
  approvals: {client_id: guard-approvals, client_secret: s3cret, approvers: [oncall@example.com], session_ttl: 5m}
"""
    page = parse_config(text, str(tmp_path / "guard.yaml"), environ={}).serve.approvals
    assert page is not None
    assert (page.issuer, page.client_id, page.client_secret, page.approvers) == (
        "https://idp.example.com", "guard-approvals", "s3cret", ("oncall@example.com",))
    assert (page.user, page.session_ttl, page.scopes) == ("email", 300, ("openid", "profile", "email"))


@pytest.mark.parametrize(("block", "message"), [
    ("{client_secret: x}", "needs `client_id`"),
    ("{client_id: a, issuer: https://other.example.com}", "must also be listed in serve.oauth"),
    ("{client_id: a, scopes: [profile]}", "must include openid"),
    ("{client_id: a, approver: [x]}", "approver"),
])
def test_approval_page_mistakes(tmp_path: Path, block: str, message: str) -> None:
    text = f"version: 1\nserve:\n  url: https://g.example.com/mcp\n  oauth: [{{issuer: https://idp.example.com}}]\n  approvals: {block}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, str(tmp_path / "guard.yaml"), environ={})
    problems = "\n".join(err.value.problems)
    assert message in problems and "guard.yaml:5:" in problems, problems


def test_the_approval_page_needs_an_issuer_when_there_are_several(tmp_path: Path) -> None:
    text = """\
version: 1
serve:
  url: https://g.example.com/mcp
  oauth: [{issuer: https://a.example.com}, {issuer: https://b.example.com}]
  approvals: {client_id: x}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, str(tmp_path / "guard.yaml"), environ={})
    assert "needs `issuer`" in "\n".join(err.value.problems)


def test_session_caps_and_what_token_exchange_needs(tmp_path: Path) -> None:
    write_keypair(tmp_path / "keys")
    base = f"version: 1\ntrust:\n  issuers: {{guard: {tmp_path}/keys/public.jwk}}\nserve:\n"
    caps = parse_config(base + "  max_sessions_per_root: 12\n  max_sessions: 300\n", str(tmp_path / "guard.yaml"), environ={}).serve
    assert (caps.max_sessions_per_principal, caps.max_sessions_per_root, caps.max_sessions) == (64, 12, 300)
    defaults = parse_config(base + "  session_idle: 1m\n", str(tmp_path / "guard.yaml"), environ={}).serve
    assert (defaults.max_sessions_per_root, defaults.max_sessions) == (256, 10000)
    with pytest.raises(ConfigError) as err:
        parse_config(base + "  max_sessions_per_root: 0\n  max_sessions: -1\n", str(tmp_path / "guard.yaml"), environ={})
    problems = "\n".join(err.value.problems)
    assert "guard.yaml:5:" in problems and "`max_sessions_per_root` must be a positive integer" in problems
    assert "guard.yaml:6:" in problems and "`max_sessions` must be a positive integer" in problems
    with pytest.raises(ConfigError) as err:  # the roots it issues name serve.url as their audience
        parse_config(base + "  oauth: [{issuer: https://idp.example.com, audience: https://g.example/mcp}]\n"
                     f"  token_exchange: {{key: {tmp_path}/keys/private.pem, issuer: guard}}\n", str(tmp_path / "guard.yaml"), environ={})
    assert "guard.yaml:6:" in "\n".join(err.value.problems) and "`token_exchange` needs `serve.url`" in "\n".join(err.value.problems)
