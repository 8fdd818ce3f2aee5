"""``mcp-guard serve`` as an OAuth 2.1 resource server, against a real authorization server
(oidc-provider, client_credentials + RFC 8707 resource indicators, JWT access tokens).

Happy paths (SDK client with the IdP's token, RFC 9728 metadata, `act` chains, token exchange to
a grant chain then offline delegation) beside the attacks: wrong audience/issuer, expired, not yet
valid, HMAC with the public key as secret, alg none, an unknown kid, a header-supplied key, a
missing scope, a token for another resource.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fixtures import (
    RecordFile,
    free_port,
    mcp_guard_bin,
    recording_server_command,
    requires_tools,
    serve_http,
    stdio_upstream,
    stop_process,
    tool_path,
    tools_env,
    wait_for_port,
    write_guard_config,
)
from fixtures.baselines import checks as baseline_checks
from fixtures.serving import cli, connect, serving_in_process
from mcp.shared.exceptions import MCPError

from mcp_guard.grants import write_keypair

pytestmark = [pytest.mark.xdist_group("serve-oauth"), pytest.mark.e2e, requires_tools("node")]

OIDC_SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "oidc_provider.mjs"


def _acts(depth: int) -> dict[str, Any]:
    """An RFC 8693 ``act`` claim ``depth`` actors deep: a0 acted first, the outermost acts now."""
    act: dict[str, Any] = {"sub": "a0"}
    for i in range(1, depth):
        act = {"sub": f"a{i}", "act": act}
    return act

NOW = int(time.time())
CLIENTS: dict[str, dict[str, Any]] = {
    "planner": {"secret": "s-planner", "claims": {"sub": "alice@example.com", "purpose": "support"}},
    "coder": {"secret": "s-coder", "claims": {"sub": "bob@example.com", "act": {"sub": "coder", "act": {"sub": "planner"}}}},
    "expired": {"secret": "s-expired", "claims": {"sub": "carol", "exp": NOW - 3600, "iat": NOW - 7200}},
    "early": {"secret": "s-early", "claims": {"sub": "carol", "nbf": NOW + 3600}},
    "elsewhere": {"secret": "s-elsewhere", "claims": {"sub": "carol", "aud": "https://other.example/mcp"}},
    # one user and agent, two purposes
    "support": {"secret": "s-support", "claims": {"sub": "dana@example.com", "purpose": "support", "act": {"sub": "helper"}}},
    "browsing": {"secret": "s-browsing", "claims": {"sub": "dana@example.com", "purpose": "browsing", "act": {"sub": "helper"}}},
    # alice > planner > coder, and a user claim that spells the same chain as a string
    "alice-coder": {"secret": "s-alice-coder", "claims": {"sub": "alice@example.com", "act": {"sub": "coder", "act": {"sub": "planner"}}}},
    "forger": {"secret": "s-forger", "claims": {"sub": "alice@example.com > agent:planner", "act": {"sub": "coder"}}},
    "deep": {"secret": "s-deep", "claims": {"sub": "erin", "act": _acts(40)}},
    "deep16": {"secret": "s-deep16", "claims": {"sub": "erin", "act": _acts(16)}},
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Idp:
    def __init__(self, port: int) -> None:
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"

    def token(self, client: str, resource: str, scope: str = "mcp") -> str:
        res = httpx2.post(f"{self.issuer}/token", auth=(client, CLIENTS[client]["secret"]),
                          data={"grant_type": "client_credentials", "scope": scope, "resource": resource})
        assert res.status_code == 200, res.text
        return str(res.json()["access_token"])

    def jwks_hits(self) -> int:
        return int(httpx2.get(f"{self.issuer}/_test/jwks_hits").json()["hits"])

    def jwks(self) -> dict[str, Any]:
        return dict(httpx2.get(f"{self.issuer}/jwks").json())


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    port = free_port()
    log = (tmp_path_factory.mktemp("idp") / "idp.log").open("w")
    proc = subprocess.Popen([str(tool_path("node")), str(OIDC_SCRIPT), str(port), json.dumps({"clients": CLIENTS})],
                            stdout=log, stderr=subprocess.STDOUT, env=tools_env())
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield Idp(port)
    finally:
        stop_process(proc)
        log.close()


class Served:
    def __init__(self, tmp: Path, idp: Idp, **serve: Any) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.record = RecordFile(tmp / "rec.jsonl")
        priv, jwk, _ = write_keypair(tmp / "guard-key")
        self.jwk = jwk
        self.config = write_guard_config(
            tmp,
            {"rec": stdio_upstream(recording_server_command(), env=self.record.env())},
            [{"id": "rec", "rules": [{"effect": "allow", "tools": ["rec/*"]}, {"effect": "deny", "tools": ["rec/delete_note"]},
                                     {"effect": "approve", "tools": ["rec/write_note"]}]}],
            trust={"issuers": {"guard": str(jwk)}},
            state={"url": f"sqlite:///{tmp / 'state.db'}"},
            audit={"path": str(tmp / "audit.jsonl")},
            approvals={"timeout": "20s"},
            serve={"url": self.url, "oauth": [{"issuer": idp.issuer, "scopes": ["mcp"], "purpose": "purpose"}],
                   "token_exchange": {"key": str(priv), "issuer": "guard", "ttl": "1h"}, **serve},
        )

    def audit(self) -> list[dict[str, Any]]:
        path = self.tmp / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start_serve(setup: Served) -> subprocess.Popen[bytes]:
    """``mcp-guard serve`` of ``setup`` as a process (the approval page's replicas and spans)."""
    log = (setup.tmp / "serve.log").open("ab")
    proc = subprocess.Popen([str(mcp_guard_bin()), "serve", "--config", str(setup.config), "--port", str(setup.port)],
                            stdout=log, stderr=subprocess.STDOUT, env=tools_env())
    wait_for_port(setup.port, timeout=60, proc=proc)
    return proc


@pytest.fixture
def served(tmp_path: Path, idp: Idp) -> Iterator[Served]:
    """A serve of ``Served``'s config in this test process (the IdP stays a real process)."""
    setup = Served(tmp_path, idp)
    with serving_in_process(setup.config, setup.port):
        yield setup


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


async def post(url: str, token: str | None, body: dict[str, Any] = INIT, **headers: str) -> httpx2.Response:
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx2.AsyncClient() as http:
        return await http.post(url, json=body, headers={**ACCEPT, **auth, **headers})


# --------------------------------------------------------------------------- happy paths


async def test_an_idp_token_is_the_callers_identity(served: Served, idp: Idp) -> None:
    token = idp.token("planner", served.url)
    async with connect(served.url, token) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "rec_echo" in names and "rec_delete_note" not in names
        assert not (await client.call_tool("rec_echo", {"text": "hi"})).is_error
        with pytest.raises(MCPError):
            await client.call_tool("rec_delete_note", {"path": "x"})
    assert served.record.tools_called() == ["echo"]
    last = [a for a in served.audit() if a.get("exposed") == "rec_echo"][-1]
    assert last["principal"] == ["user:alice@example.com", "agent:planner"] and last["verified"] is True


async def test_an_act_claim_becomes_the_principal_chain(served: Served, idp: Idp) -> None:
    async with connect(served.url, idp.token("coder", served.url)) as client:
        assert not (await client.call_tool("rec_echo", {"text": "hi"})).is_error
    last = [a for a in served.audit() if a.get("exposed") == "rec_echo"][-1]
    assert last["principal"] == ["user:bob@example.com", "agent:planner", "agent:coder"]


async def test_protected_resource_metadata_and_the_challenge(served: Served, idp: Idp) -> None:
    base = f"http://127.0.0.1:{served.port}"
    async with httpx2.AsyncClient() as http:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            meta = (await http.get(base + path)).json()
            assert meta["resource"] == served.url and meta["authorization_servers"] == [idp.issuer]
            assert meta["scopes_supported"] == ["mcp"] and meta["bearer_methods_supported"] == ["header"]
    none = await post(served.url, None)
    challenge = none.headers["www-authenticate"]
    assert none.status_code == 401
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert 'scope="mcp"' in challenge and "error=" not in challenge  # RFC 6750: no error code without credentials


class _Tokens:
    """In-memory TokenStorage for the SDK's OAuth client."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client_info: Any) -> None:
        self.client = client_info


async def test_the_sdks_oauth_client_discovers_everything_from_the_401(served: Served, idp: Idp) -> None:
    """The mcp SDK's own OAuth client (client_credentials): 401 -> RFC 9728 metadata -> the IdP's
    metadata -> a token for this resource (RFC 8707) -> the call; nothing configured but the URL."""
    from mcp import Client
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    storage = _Tokens()
    auth = ClientCredentialsOAuthProvider(served.url, storage, "planner", CLIENTS["planner"]["secret"], scope="mcp", issuer=idp.issuer)
    async with create_mcp_http_client(auth=auth) as http, Client(streamable_http_client(served.url, http_client=http)) as client:
        assert not (await client.call_tool("rec_echo", {"text": "discovered"})).is_error
    assert storage.tokens is not None and jwt.decode(storage.tokens.access_token, options={"verify_signature": False})["aud"] == served.url
    assert served.record.calls() == [("echo", {"text": "discovered"})]


# --------------------------------------------------------------------------- attacks


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(sign(head.encode()))


def _claims(idp: Idp, served: Served, **extra: Any) -> dict[str, Any]:
    return {"iss": idp.issuer, "aud": served.url, "sub": "mallory", "client_id": "evil", "scope": "mcp",
            "iat": int(time.time()), "exp": int(time.time()) + 300, **extra}


async def test_tokens_that_must_be_refused(served: Served, idp: Idp) -> None:
    rsa_pub = next(k for k in idp.jwks()["keys"] if k["kty"] == "RSA")
    pem = jwt.PyJWK.from_dict(rsa_pub).key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = _claims(idp, served)
    cases: dict[str, tuple[str, int, str]] = {
        "another resource": (idp.token("planner", "http://127.0.0.1:1/mcp"), 401, "not issued for this resource"),
        "wrong audience": (idp.token("elsewhere", served.url), 401, "not issued for this resource"),
        "expired": (idp.token("expired", served.url), 401, "expired"),
        "not yet valid": (idp.token("early", served.url), 401, "not valid yet"),
        "missing scope": (idp.token("planner", served.url, scope="mcp:admin"), 403, "lacks the scope mcp"),
        "hmac with the public key": (_forge({"alg": "HS256", "typ": "at+jwt", "kid": rsa_pub["kid"]}, claims,
                                            lambda m: hmac.new(pem, m, hashlib.sha256).digest()), 401, "only asymmetric"),
        "alg none": (_forge({"alg": "none", "typ": "at+jwt"}, claims, lambda m: b""), 401, "only asymmetric"),
        "unknown kid": (jwt.encode(claims, attacker, "RS256", headers={"kid": "attacker-1"}), 401, "no signing key"),
        "header-supplied key": (jwt.encode(claims, attacker, "RS256", headers={
            "kid": rsa_pub["kid"], "jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))}),
            401, "Signature verification failed"),
        "wrong issuer": (jwt.encode({**claims, "iss": "https://evil.example"}, attacker, "RS256"), 401, "not trusted here"),
    }
    for name, (token, status, why) in cases.items():
        res = await post(served.url, token)
        challenge = res.headers.get("www-authenticate", "")
        assert res.status_code == status, (name, res.status_code, challenge)
        assert why in challenge and "resource_metadata=" in challenge, (name, challenge)
        assert ('error="insufficient_scope"' if status == 403 else 'error="invalid_token"') in challenge, name
    assert served.record.calls() == []


async def test_an_unknown_kid_refetches_the_keys_once_then_refuses(served: Served, idp: Idp) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with connect(served.url, idp.token("planner", served.url)) as client:  # keys fetched once
        await client.list_tools()
    before = idp.jwks_hits()
    for i in range(5):
        forged = jwt.encode(_claims(idp, served), attacker, "RS256", headers={"kid": f"rotated-{i}"})
        assert (await post(served.url, forged)).status_code == 401
    assert idp.jwks_hits() - before == 1  # refetched for the first unknown kid, then rate-limited


# --------------------------------------------------------------------------- token exchange


async def test_token_exchange_then_offline_delegation(served: Served, idp: Idp, tmp_path: Path) -> None:
    agent_priv, agent_jwk, _ = write_keypair(tmp_path / "agent-key")
    sub_priv, sub_jwk, _ = write_keypair(tmp_path / "sub-key")
    access = idp.token("planner", served.url)
    async with httpx2.AsyncClient() as http:
        res = await http.post(f"http://127.0.0.1:{served.port}/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": access,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "cnf_jwk": agent_jwk.read_text(),
        })
        assert res.status_code == 200, res.text
        root = res.json()["access_token"]
        assert res.json()["issued_token_type"] == "urn:mcp-guard:params:oauth:token-type:grant-chain"
        # a grant chain is not a subject token; nor is a token from no trusted issuer
        refused = await http.post(f"http://127.0.0.1:{served.port}/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": root,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "cnf_jwk": agent_jwk.read_text()})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
        exchange = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": access,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "cnf_jwk": agent_jwk.read_text()}
        for change, code in (({"grant_type": "client_credentials"}, "unsupported_grant_type"),
                             ({"cnf_jwk": json.dumps(idp.jwks()["keys"][0])}, "invalid_request"),  # not an Ed25519 public key
                             ({"subject_token": idp.token("expired", served.url)}, "invalid_grant"),
                             ({"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "invalid_request")):
            bad = await http.post(f"http://127.0.0.1:{served.port}/token", data={**exchange, **change})
            assert bad.status_code == 400 and bad.json()["error"] == code, (change, bad.text)
    delegated = await cli("grant", "delegate", "--chain", root, "--key", str(agent_priv), "--agent", "summarizer",
                           "--agent-key", str(sub_jwk), "--tools", "rec/echo", "--ttl", "10m")
    assert delegated.returncode == 0, delegated.stderr
    chain = delegated.stdout.strip()
    async with connect(served.url, chain) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["rec_echo"]
        assert not (await client.call_tool("rec_echo", {"text": "from the sub-agent"})).is_error
    last = [a for a in served.audit() if a.get("exposed") == "rec_echo"][-1]
    assert last["principal"] == ["user:alice@example.com", "agent:planner", "agent:summarizer"] and last["verified"] is True
    # the root is bound to the agent's key: someone else's key cannot extend it
    stolen = await cli("grant", "delegate", "--chain", root, "--key", str(sub_priv), "--agent", "thief", "--tools", "rec/echo")
    assert stolen.returncode != 0


# --------------------------------------------------------------------------- the official suite


@pytest.mark.slow
@pytest.mark.timeout(420)
@requires_tools("conformance")
def test_conformance_suite_through_serve_with_an_idp_token(idp: Idp, tmp_path: Path) -> None:
    """The official suite sends the IdP's token itself (no proxy, Host and Origin as it sets them) to
    serve -> fixture, and scores at least what the fixture scores alone (its baseline)."""
    from fixtures import ALLOW_ALL, conformance_server_command, serve_http
    from fixtures.suites import failed, passed, run_conformance

    direct = baseline_checks("active-alone")
    serve_port = free_port()
    url = f"http://localhost:{serve_port}/mcp"
    config = write_guard_config(
        tmp_path, {"conformance": stdio_upstream(conformance_server_command(), prefix=False)}, ALLOW_ALL,
        serve={"url": url, "oauth": [{"issuer": idp.issuer, "scopes": ["mcp"]}]},
    )
    with serve_http([str(mcp_guard_bin()), "serve", "--config", str(config), "--port", str(serve_port)], serve_port,
                    log=tmp_path / "serve.log"):
        checks = run_conformance(url, tmp_path / "results", bearer=idp.token("planner", url))
    ok, bad = passed(checks), failed(checks)
    print(f"conformance: fixture alone {len(passed(direct))} passed; through serve + OAuth {len(ok)} passed, "
          f"{len(bad)} failed: {sorted(bad)}")
    assert len(ok) >= len(passed(direct)), sorted(passed(direct) - ok)
    assert not bad, sorted(bad)
    assert ("dns-rebinding-protection", "localhost-host-rebinding-rejected") in ok


# --------------------------------------------------------------------------- binding and depth

MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}


def _echo(text: str, modern: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "rec_echo", "arguments": {"text": text}}
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {**params, "_meta": MODERN_META} if modern else params}


async def test_a_session_is_bound_to_the_whole_principal(served: Served, idp: Idp) -> None:
    """Another purpose of the same user and agent, and a user claim that spells another chain as a
    string, are other principals: on the session they did not open they get 403, audited."""
    pairs = [(idp.token("support", served.url), idp.token("browsing", served.url)),
             (idp.token("alice-coder", served.url), idp.token("forger", served.url))]
    async with httpx2.AsyncClient() as http:
        for owner, intruder in pairs:
            sid = (await post(served.url, owner)).headers["mcp-session-id"]
            await post(served.url, owner, {"jsonrpc": "2.0", "method": "notifications/initialized"}, **{"Mcp-Session-Id": sid})
            assert "result" in (await post(served.url, owner, _echo("mine"), **{"Mcp-Session-Id": sid})).json()
            theirs = await post(served.url, intruder, _echo("theirs"), **{"Mcp-Session-Id": sid})
            assert theirs.status_code == 403 and "belongs to another caller" in theirs.text
            listen = await http.get(served.url, headers={**ACCEPT, "Authorization": f"Bearer {intruder}", "Mcp-Session-Id": sid})
            assert listen.status_code == 403
            gone = await http.delete(served.url, headers={"Authorization": f"Bearer {intruder}", "Mcp-Session-Id": sid})
            assert gone.status_code == 404
            assert (await post(served.url, owner, _echo("still mine"), **{"Mcp-Session-Id": sid})).status_code == 200
    assert [c[1]["text"] for c in served.record.calls()] == ["mine", "still mine"] * 2
    refused = [(a["principal"], a["purpose"], a["method"]) for a in served.audit() if a["decision"] == "deny" and a["kind"] is None]
    dana, forger = ["user:dana@example.com", "agent:helper"], ["user:alice@example.com > agent:planner", "agent:coder"]
    assert refused == [(dana, "browsing", "tools/call"), (dana, "browsing", "GET"), (dana, "browsing", "DELETE"),
                       (forger, None, "tools/call"), (forger, None, "GET"), (forger, None, "DELETE")]
    allowed = [(a["principal"], a["purpose"]) for a in served.audit() if a.get("exposed") == "rec_echo"]
    assert allowed == [(dana, "support")] * 2 + [(["user:alice@example.com", "agent:planner", "agent:coder"], None)] * 2


async def test_stateless_requests_never_take_over_another_tokens_purpose(served: Served, idp: Idp) -> None:
    """2026-07-28: no session id; whichever token speaks first must not set the purpose for the other."""
    for client, text in (("support", "s1"), ("browsing", "b1"), ("support", "s2"), ("alice-coder", "c1"), ("forger", "f1")):
        res = await post(served.url, idp.token(client, served.url), _echo(text, modern=True))
        assert res.status_code == 200 and "result" in res.json(), res.text
    seen = [(a["principal"][0], a["purpose"]) for a in served.audit() if a.get("exposed") == "rec_echo"]
    assert seen == [("user:dana@example.com", "support"), ("user:dana@example.com", "browsing"), ("user:dana@example.com", "support"),
                    ("user:alice@example.com", None), ("user:alice@example.com > agent:planner", None)]


async def test_an_act_chain_deeper_than_supported_is_refused_not_cut(served: Served, idp: Idp) -> None:
    res = await post(served.url, idp.token("deep", served.url))
    assert res.status_code == 401 and "deeper than 16 actors" in res.headers["www-authenticate"]
    async with connect(served.url, idp.token("deep16", served.url)) as client:  # 16 is supported, whole
        assert not (await client.call_tool("rec_echo", {"text": "deep"})).is_error
    last = [a for a in served.audit() if a.get("exposed") == "rec_echo"][-1]
    assert last["principal"] == ["user:erin", *(f"agent:a{i}" for i in range(16))]
    assert served.record.calls() == [("echo", {"text": "deep"})]


async def test_an_exchanged_root_lives_no_longer_than_its_token_and_names_this_guard(served: Served, idp: Idp, tmp_path: Path) -> None:
    """The IdP's token lives 5 minutes, the exchange's ttl is an hour: the root ends with the token.
    Its audience is serve.url, so another guard that trusts the same key with the default
    audience refuses it, while this guard accepts it."""
    _, agent_jwk, _ = write_keypair(tmp_path / "agent-key")
    access = idp.token("planner", served.url)
    async with httpx2.AsyncClient() as http:
        res = await http.post(f"http://127.0.0.1:{served.port}/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": access,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "cnf_jwk": agent_jwk.read_text()})
    assert res.status_code == 200, res.text
    root = res.json()["access_token"]
    link = jwt.decode(root, options={"verify_signature": False})
    assert link["exp"] <= jwt.decode(access, options={"verify_signature": False})["exp"] and res.json()["expires_in"] <= 300
    assert link["aud"] == served.url
    async with connect(served.url, root) as client:
        assert not (await client.call_tool("rec_echo", {"text": "root"})).is_error
    other_dir = tmp_path / "other"
    other_port = free_port()
    config = write_guard_config(other_dir, {"rec": stdio_upstream(recording_server_command(), env=served.record.env())},
                                [{"id": "rec", "rules": [{"effect": "allow", "tools": ["rec/*"]}]}],
                                trust={"issuers": {"guard": str(served.jwk)}})
    with serve_http([str(mcp_guard_bin()), "serve", "--config", str(config), "--port", str(other_port)], other_port,
                    log=other_dir / "serve.log", timeout=60) as other:
        refused = await post(other, root)
    assert refused.status_code == 401 and "audience_mismatch" in refused.headers["www-authenticate"]
    assert served.record.calls() == [("echo", {"text": "root"})]
