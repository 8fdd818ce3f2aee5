"""HTTP upstreams that require authorization: the guard as an OAuth 2.1 client.

* The official conformance suite's client auth scenarios, run against host -> `mcp-guard run` ->
  scenario server: the guard scores at least what the `mcp` SDK's own client scores, scenario by
  scenario (the SDK's scores are baselines, ``fixtures/baselines.py``: checked in, and run live only
  when made with other versions than those installed).
* `mcp-guard login` / `run` / `logout` against a standing scenario server (the suite's interactive
  mode: an MCP server that answers 401 and an authorization server that approves at once): the
  loopback redirect is driven by `oauth_browser.py` as `$BROWSER`, no person needed.  Without a
  stored token `run` does not wait for anyone; with one, the token is used and never shows up in
  the guard's log, spans or audit file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import (
    FIXTURES_DIR,
    PYTHON,
    free_port,
    guarded_session,
    mcp_guard_bin,
    requires_tools,
    serve_http,
    stop_process,
    tool_path,
    tools_env,
    write_guard_config,
)
from fixtures.baselines import AUTH_RUNS, auth_name, scores
from fixtures.suites import run_auth_suite

pytestmark = [pytest.mark.e2e, requires_tools("conformance")]

BROWSER = shlex.join([PYTHON, str(FIXTURES_DIR / "oauth_browser.py")]) + " %s"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", AUTH_RUNS, ids=[w[1].removeprefix("auth/") for w in AUTH_RUNS])
def test_guard_scores_at_least_the_sdk_client_on_the_auth_suite(tmp_path: Path, which: tuple[str, ...]) -> None:
    """Scenario by scenario, the guard passes at least the checks the SDK client passes and fails no more
    (one test per suite run, so the runs spread over the workers)."""
    sdk, guard = scores(auth_name(which)), run_auth_suite("guard", tmp_path / "guard", which)
    lines = [f"{'scenario':45} {'sdk':>9} {'guard':>9}"]
    for scenario in sorted(set(sdk) | set(guard)):
        s, g = sdk.get(scenario, (0, 0)), guard.get(scenario, (0, 0))
        lines.append(f"{scenario:45} {s[0]:>4}/{s[1]:<4} {g[0]:>4}/{g[1]:<4}")
    print("\n".join(lines))  # passed/failed checks per scenario, shown with -s or on failure
    assert len(sdk) >= (14 if which[0] == "--suite" else 1)
    worse = [s for s in sdk if guard.get(s, (0, 0))[0] < sdk[s][0] or guard.get(s, (0, 0))[1] > sdk[s][1]]
    assert not worse, "the guard scores below the SDK client on:\n" + "\n".join(lines)
    assert sum(p for p, _ in guard.values()) >= sum(p for p, _ in sdk.values())


# --------------------------------------------------------------------------- login / run / logout


@contextlib.contextmanager
def scenario_server(scenario: str, log: Path) -> Iterator[str]:
    """The suite's interactive mode: a standing MCP server + authorization server for ``scenario``."""
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([str(tool_path("conformance")), "client", "--scenario", scenario],
                                stdout=subprocess.PIPE, stderr=out, text=True, env=tools_env())
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("Server URL:"):
                    yield line.split(":", 1)[1].strip()
                    break
            else:
                raise AssertionError(f"no server URL from the conformance scenario {scenario}")
        finally:
            stop_process(proc)


def _guard_env(**extra: str) -> dict[str, str]:
    env = tools_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50", **extra})
    env.pop("BROWSER", None)
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(mcp_guard_bin()), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def _stored(token_file: Path) -> dict[str, Any]:
    """Decrypt the stored record the way the guard does (the test holds the machine's key file)."""
    from cryptography.fernet import Fernet

    if not token_file.exists():
        return {}
    key = (token_file.parent.parent / "key").read_bytes().strip()
    return dict(json.loads(Fernet(key).decrypt(token_file.read_bytes())))


async def test_login_then_run_uses_the_stored_token_and_never_shows_it(tmp_path: Path) -> None:
    with scenario_server("auth/metadata-default", tmp_path / "scenario.log") as url:
        config = write_guard_config(
            tmp_path, {"up": {"url": url, "prefix": False, "auth": {"oauth": {}}}},
            state={"url": "sqlite:///state/state.db"}, identity={"user": "alice"},
            audit={"path": str(tmp_path / "audit.jsonl"), "include_args": True},
        )
        token_file = tmp_path / "state" / "tokens" / "alice" / "up.token"

        # 1. No token, no $BROWSER: run does not wait on anyone; it says what to do.
        first_log = tmp_path / "first.log"
        async with guarded_session(config, env=_guard_env(), stderr=first_log) as host:
            assert (await host.list_tools()).tools == []
        assert "needs authorization: run `mcp-guard login up` first" in first_log.read_text()
        assert not _stored(token_file).get("tokens")  # at most the client registration was kept

        # 2. login: the authorization URL is printed and opened in $BROWSER, the loopback redirect lands.
        opened = tmp_path / "opened.txt"
        done = _cli("login", "up", "--config", str(config), "--timeout", "60s",
                    env=_guard_env(BROWSER=BROWSER, OAUTH_BROWSER_LOG=str(opened)), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "logged in to up" in done.stdout
        auth_url = opened.read_text().strip()
        assert auth_url in done.stderr and "code_challenge_method=S256" in auth_url
        assert "resource=" + url.replace(":", "%3A").replace("/", "%2F") in auth_url  # RFC 8707: the upstream's URI
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((token_file.parent.parent / "key").stat().st_mode) == 0o600
        token = str(_stored(token_file)["tokens"]["access_token"])
        assert token and token.encode() not in token_file.read_bytes()  # encrypted at rest

        # 3. run with the stored token: no browser, tools work; the token is nowhere in log/spans/audit.
        log = tmp_path / "guard.log"
        async with guarded_session(config, env=_guard_env(), stderr=log) as host:
            assert [t.name for t in (await host.list_tools()).tools] == ["test-tool"]
            assert not (await host.call_tool("test-tool", {})).is_error
        text = log.read_text()
        assert "Authorize mcp-guard" not in text
        assert '"name":' in text  # console spans were written to this log
        for where in (text, (tmp_path / "audit.jsonl").read_text(), done.stdout, done.stderr):
            assert token not in where

        # 4. logout forgets it; run is back to asking for a login.
        out = _cli("logout", "up", "--config", str(config), env=_guard_env(), cwd=tmp_path)
        assert out.returncode == 0 and "logged out of up" in out.stdout
        assert not token_file.exists()
        again = _cli("logout", "up", "--config", str(config), env=_guard_env(), cwd=tmp_path)
        assert "nothing stored for up" in again.stdout


def test_login_names_unknown_and_unauthenticated_upstreams(tmp_path: Path) -> None:
    config = write_guard_config(tmp_path, {"plain": {"url": "http://127.0.0.1:9/mcp"}})
    unknown = _cli("login", "plian", "--config", str(config), env=_guard_env(), cwd=tmp_path)
    assert unknown.returncode != 0 and "no upstream named `plian` (did you mean `plain`?)" in unknown.stderr
    bare = _cli("login", "plain", "--config", str(config), env=_guard_env(), cwd=tmp_path)
    assert bare.returncode != 0 and "has no `auth: oauth`" in bare.stderr
    assert "Traceback" not in unknown.stderr + bare.stderr


def test_login_times_out_without_a_browser_answer(tmp_path: Path) -> None:
    with scenario_server("auth/metadata-default", tmp_path / "scenario.log") as url:
        config = write_guard_config(tmp_path, {"up": {"url": url, "auth": {"oauth": {}}}},
                                    state={"url": "sqlite:///state/state.db"})
        # a "browser" that opens nothing: the login gives up after its timeout with one sentence
        done = _cli("login", "up", "--config", str(config), "--timeout", "1s",  # the shortest: it is waited out
                    env=_guard_env(BROWSER=shlex.join([sys.executable, "-c", "pass"])), cwd=tmp_path)
    assert done.returncode != 0
    assert "no authorization arrived at the loopback redirect within 1s" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(_stored(f).get("tokens") for f in (tmp_path / "state" / "tokens").rglob("*.token"))


def test_an_authorization_response_from_another_issuer_is_refused(tmp_path: Path) -> None:
    """RFC 9207: a redirect whose `iss` is not the authorization server's (a mix-up attack) is refused."""
    with scenario_server("auth/metadata-default", tmp_path / "scenario.log") as url:
        config = write_guard_config(tmp_path, {"up": {"url": url, "auth": {"oauth": {}}}},
                                    state={"url": "sqlite:///state/state.db"})
        env = _guard_env(BROWSER=BROWSER, OAUTH_BROWSER_ISS="https://attacker.example")
        done = _cli("login", "up", "--config", str(config), "--timeout", "30s", env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "iss mismatch: https://attacker.example" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(_stored(f).get("tokens") for f in (tmp_path / "state" / "tokens").rglob("*.token"))


# --------------------------------------------------------------------------- a real authorization server


@contextlib.contextmanager
def protected_upstream(tmp_path: Path, ttl: int) -> Iterator[tuple[str, str, int, Path]]:
    """oidc-provider (issuer) + an SDK MCP server that accepts only its JWTs for itself.

    Yields (upstream URL, issuer, loopback redirect port registered for `guard-app`, record of the
    accepted tokens).
    """
    as_port, mcp_port, redirect_port = free_port(), free_port(), free_port()
    issuer, url = f"http://127.0.0.1:{as_port}", f"http://127.0.0.1:{mcp_port}/mcp"
    record = tmp_path / "accepted.jsonl"
    idp = {"resource": url, "ttl": ttl, "scopes": "tools admin", "clients": {
        "svc": {"secret": "svc-secret"},
        "guard-app": {"redirect_uris": [f"http://127.0.0.1:{redirect_port}/callback"], "scope": "openid offline_access tools admin"},
    }}
    as_argv = [str(tool_path("node")), str(FIXTURES_DIR / "oidc_provider.mjs"), str(as_port), json.dumps(idp)]
    server_argv = [PYTHON, str(FIXTURES_DIR / "protected_server.py"), "--port", str(mcp_port), "--issuer", issuer,
                   "--record", str(record)]
    with serve_http(as_argv, as_port, log=tmp_path / "as.log"), serve_http(server_argv, mcp_port, log=tmp_path / "server.log"):
        yield url, issuer, redirect_port, record


def _presented(record: Path) -> list[dict[str, Any]]:
    """Every bearer token the protected upstream was shown (hashed), accepted or not."""
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _accepted(record: Path) -> list[dict[str, Any]]:
    return [entry for entry in _presented(record) if entry["accepted"]]


@requires_tools("node")
async def test_client_credentials_against_oidc_provider_gets_calls_and_renews(tmp_path: Path) -> None:
    with protected_upstream(tmp_path, ttl=3) as (url, issuer, _, record):
        cc = {"client_id": "svc", "client_secret": "${SVC_SECRET}", "scopes": ["tools"], "issuer": issuer}
        config = write_guard_config(tmp_path, {"svc": {"url": url, "auth": {"client_credentials": cc}}},
                                    state={"url": "sqlite:///state/state.db"},
                                    audit={"path": str(tmp_path / "audit.jsonl"), "include_args": True})
        log = tmp_path / "guard.log"
        async with guarded_session(config, env=_guard_env(SVC_SECRET="svc-secret"), stderr=log) as host:
            assert [t.name for t in (await host.list_tools()).tools] == ["svc_whoami"]
            first = await host.call_tool("svc_whoami", {})
            assert not first.is_error and "client=svc" in first.content[0].text  # type: ignore[union-attr]
            await asyncio.sleep(4)  # the 3 s token expires; the next call gets a new one by itself
            second = await host.call_tool("svc_whoami", {})
            assert not second.is_error, second
        tokens = {a["jti"] for a in _accepted(record)}
        assert len(tokens) >= 2
        stored = _stored(tmp_path / "state" / "tokens" / "default" / "svc.token")
        secret_values = [stored["tokens"]["access_token"], "svc-secret"]
        for where in (log.read_text(), (tmp_path / "audit.jsonl").read_text()):
            for value in secret_values:
                assert value not in where


@requires_tools("node")
async def test_authorization_code_against_oidc_provider_logs_in_and_refreshes_after_a_restart(tmp_path: Path) -> None:
    with protected_upstream(tmp_path, ttl=3) as (url, _issuer, redirect_port, _record):
        oauth = {"client_id": "guard-app", "redirect_uri": f"http://127.0.0.1:{redirect_port}/callback",
                 "scopes": ["tools", "offline_access"]}
        config = write_guard_config(tmp_path, {"app": {"url": url, "prefix": False, "auth": {"oauth": oauth}}},
                                    state={"url": "sqlite:///state/state.db"}, identity={"user": "alice"})
        done = _cli("login", "app", "--config", str(config), "--timeout", "60s",
                    env=_guard_env(BROWSER=BROWSER), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "refreshable" in done.stdout
        token_file = tmp_path / "state" / "tokens" / "alice" / "app.token"
        before = _stored(token_file)["tokens"]
        await asyncio.sleep(4)  # the access token expired while no guard ran
        log = tmp_path / "guard.log"
        async with guarded_session(config, env=_guard_env(), stderr=log) as host:
            answer = await host.call_tool("whoami", {})
            assert not answer.is_error and "sub=alice" in answer.content[0].text  # type: ignore[union-attr]
        after = _stored(token_file)["tokens"]
        assert after["access_token"] != before["access_token"]  # refreshed, at the issuer's token endpoint
        assert "Authorize mcp-guard" not in log.read_text()  # no new authorization was needed
        for value in (before["access_token"], after["access_token"], before.get("refresh_token", "-"), after.get("refresh_token", "-")):
            assert value not in log.read_text()


@requires_tools("node")
async def test_serve_never_sends_the_callers_token_upstream(tmp_path: Path) -> None:
    """serve: callers present grant chains to the guard; the upstream only ever sees the guard's JWT."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    from mcp_guard.grants import generate_keypair, issue_grant, public_jwk

    key, pub = generate_keypair()
    (tmp_path / "idp.jwk").write_text(json.dumps(public_jwk(pub)))
    chain = issue_grant(key, "corp-idp", "alice", "agent", ["svc/*"])
    with protected_upstream(tmp_path, ttl=60) as (url, issuer, _, record):
        cc = {"client_id": "svc", "client_secret": "svc-secret", "scopes": ["tools"], "issuer": issuer}
        config = write_guard_config(tmp_path, {"svc": {"url": url, "auth": {"client_credentials": cc}}},
                                    state={"url": "sqlite:///state/state.db"},
                                    trust={"issuers": {"corp-idp": str(tmp_path / "idp.jwk")}})
        port = free_port()
        with serve_http([str(mcp_guard_bin()), "serve", "--config", str(config), "--port", str(port)], port,
                        log=tmp_path / "serve.log", env=_guard_env()):
            headers = {"Authorization": f"Bearer {chain}"}
            async with (create_mcp_http_client(headers=headers) as http,
                        Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http), mode="legacy") as host):
                answer = await host.call_tool("svc_whoami", {})
                assert not answer.is_error and "client=svc" in answer.content[0].text  # type: ignore[union-attr]
    presented = _presented(record)
    assert presented and all(entry["accepted"] for entry in presented)
    assert hashlib.sha256(chain.encode()).hexdigest() not in {entry["sha256"] for entry in presented}
    assert chain not in (tmp_path / "serve.log").read_text()


async def test_a_step_up_without_a_browser_is_remembered_for_the_next_login(tmp_path: Path) -> None:
    """403 insufficient_scope in a run without a browser: the call fails with one sentence, and the
    next `login` asks for the old and the challenged scopes together; then the call goes through."""
    with scenario_server("auth/scope-step-up", tmp_path / "scenario.log") as url:
        config = write_guard_config(tmp_path, {"up": {"url": url, "prefix": False, "auth": {"oauth": {}}}},
                                    state={"url": "sqlite:///state/state.db"})
        opened = tmp_path / "opened.txt"
        login_env = _guard_env(BROWSER=BROWSER, OAUTH_BROWSER_LOG=str(opened))
        assert _cli("login", "up", "--config", str(config), env=login_env, cwd=tmp_path).returncode == 0
        assert "scope=mcp%3Abasic" in opened.read_text() and "mcp%3Awrite" not in opened.read_text()

        log = tmp_path / "guard.log"
        async with guarded_session(config, env=_guard_env(), stderr=log) as host:
            assert [t.name for t in (await host.list_tools()).tools] == ["test-tool"]
            with pytest.raises(Exception) as refused:
                result = await host.call_tool("test-tool", {})
                raise AssertionError(result.content[0].text)  # type: ignore[union-attr]
            assert "run `mcp-guard login up` first" in str(refused.value)

        opened.unlink()
        again = _cli("login", "up", "--config", str(config), env=login_env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "scope=mcp%3Abasic+mcp%3Awrite" in opened.read_text()
        async with guarded_session(config, env=_guard_env(), stderr=log) as host:
            assert not (await host.call_tool("test-tool", {})).is_error
