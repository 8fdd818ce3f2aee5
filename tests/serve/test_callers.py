"""``serve``'s callers by grant-chain token: kept between requests, yet every request's token is
still verified and time-checked (an expired chain is refused after it was kept)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from mcp_guard.config import ServeConfig
from mcp_guard.grants import ChainVerifier, delegate, generate_keypair, issue_grant
from mcp_guard.serve import resource
from mcp_guard.serve.resource import CALLERS_KEPT, Caller, ResourceServer


def server_and_tokens() -> tuple[ResourceServer, str, str]:
    idp, idp_pub = generate_keypair()
    planner, planner_pub = generate_keypair()
    root = issue_grant(idp, "corp-idp", "alice@example.com", "planner", ["up/*"], agent_key=planner_pub, depth=1, ttl=600)
    coder = delegate(root, planner, "coder", ["up/echo"], ttl=60)
    tester = delegate(root, planner, "tester", ["up/echo"], ttl=60)
    verifier = ChainVerifier({"corp-idp": idp_pub}, "urn:mcp-guard:local")
    return ResourceServer(verifier, ServeConfig(), frozenset({"corp-idp"}), None), coder, tester


async def test_the_same_token_gets_the_same_caller_and_another_token_its_own() -> None:
    server, coder, tester = server_and_tokens()
    first = await server.identify(None, coder)
    again = await server.identify(None, coder)
    other = await server.identify(None, tester)
    assert isinstance(first, Caller) and isinstance(other, Caller)
    assert again is first
    assert other.binding != first.binding and other.principal.agents == ("planner", "tester")
    assert first.binding == (await ResourceServer(server.verifier, ServeConfig(), frozenset(), None).identify(None, coder)).binding  # type: ignore[union-attr]


async def test_a_kept_caller_whose_chain_expired_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    server, coder, _ = server_and_tokens()
    assert isinstance(await server.identify(None, coder), Caller)
    monkeypatch.setattr(resource, "time", SimpleNamespace(time=lambda: time.time() + 120))  # the coder link lived 60 s
    refused = await server.identify(None, coder)
    assert not isinstance(refused, Caller) and refused.status_code == 401
    assert b"expired" in bytes(refused.body)


async def test_a_forged_token_is_never_kept() -> None:
    server, coder, _ = server_and_tokens()
    forged = coder[:-4] + ("AAAA" if not coder.endswith("AAAA") else "BBBB")
    for _ in range(2):
        refused = await server.identify(None, forged)
        assert not isinstance(refused, Caller) and refused.status_code == 401
    assert forged not in server._callers


async def test_the_kept_callers_are_bounded() -> None:
    server, coder, _ = server_and_tokens()
    server._callers.update({f"t{i}": None for i in range(CALLERS_KEPT)})  # type: ignore[misc]
    assert isinstance(await server.identify(None, coder), Caller)
    assert len(server._callers) == 1
