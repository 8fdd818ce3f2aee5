"""The official suite's 0.2.x line (``conformance-next``), beside 0.1.16: the 2026-07-28 server
scenarios (``--requirements 2026-07-28``) against the fixture alone, through ``serve``, and through
``run`` (behind ``fixtures/stdio_bridge.py``, HTTP to stdio), and the handshake-era scenarios of the
same line through ``run`` (behind supergateway) and ``serve``.

Every check that passes against the fixture alone passes through the guard, apart from
``BY_DESIGN``: checks that call a tool the fixture does not have, which pass alone only because
the SDK answers an unknown tool with an ``isError`` result; the guard answers ``-32602 Unknown
tool`` (a hidden tool answers exactly like one that does not exist).  Through ``run``, also apart
from ``NOT_ON_STDIO``: the era's HTTP checks (status codes, the routing and version headers, the
``Host`` header), which belong to whatever carries stdio over HTTP, not to the stdio guard.  The
2026-07-28 tests assert the exact set of checks lost, so a regression (or a fix) names its check.

The fixture's own scores are baselines (``fixtures/baselines.py``: checked in, and run live only
when made with other versions than those installed); the long run through ``run`` is split into
sets of scenarios so both workers share it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from fixtures import (
    ALLOW_ALL,
    VENV_BIN,
    conformance_server_command,
    free_port,
    guard_command,
    mcp_guard_bin,
    requires_tools,
    serve_http,
    stdio_upstream,
    tool_path,
    write_guard_config,
)
from fixtures.baselines import HANDSHAKE, MODERN, checks, scenario_sets
from fixtures.suites import NEXT_SUITE, Checks, passed, run_next
from test_conformance import SUPERGATEWAY_ONLY_FAILURES, run_client_scenario

from mcp_guard.grants import generate_keypair, issue_grant, public_jwk

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              requires_tools("conformance", "supergateway"),
              pytest.mark.skipif(not NEXT_SUITE.is_file(), reason="conformance-next missing from .tools; run scripts/setup")]

UNKNOWN_TOOL_CHECKS = frozenset({
    ("input-required-result-ignore-extra-params", "sep-2322-ignore-unexpected-params"),
    ("tasks-capability-negotiation", "sep-2663-server-rejects-undeclared-client"),
    ("tasks-dispatch-and-envelope", "sep-2663-legacy-task-param-ignored"),
    ("tasks-dispatch-and-envelope", "tasks-immediate-result-shortcut"),
    ("tasks-dispatch-and-envelope", "tasks-result-type-complete-on-non-task-responses"),
    ("tasks-lifecycle", "tasks-sync-tool-call"),
})
BY_DESIGN = UNKNOWN_TOOL_CHECKS
NOT_ON_STDIO = frozenset({
    ("dns-rebinding-protection", "localhost-host-rebinding-rejected"),
    ("http-header-validation", "sep-2243-server-reject-error-code"),
    ("http-header-validation", "sep-2243-server-reject-invalid-headers"),
    ("server-stateless", "sep-2575-http-server-header-mismatch-400"),
    ("server-stateless", "sep-2575-http-server-meta-invalid-400"),
    ("server-stateless", "sep-2575-http-server-method-not-found-404"),
    ("server-stateless", "sep-2575-http-server-method-not-found-404-initialize"),
    ("server-stateless", "sep-2575-http-server-method-not-found-404-logging-setlevel"),
    ("server-stateless", "sep-2575-http-server-method-not-found-404-ping"),
    ("server-stateless", "sep-2575-http-server-method-not-found-404-resources-subscribe"),
    ("server-stateless", "sep-2575-http-server-method-not-found-404-resources-unsubscribe"),
    ("server-stateless", "sep-2575-http-server-unsupported-version-400"),
    ("tasks-request-headers", "tasks-headers-reject-mismatched-method"),
})
STDIO_BRIDGE = Path(__file__).resolve().parents[1] / "fixtures" / "stdio_bridge.py"
REFERENCES = {MODERN: "next-2026-07-28-alone", HANDSHAKE: "next-2025-11-25-alone"}
HANDSHAKE_SETS = scenario_sets(REFERENCES[HANDSHAKE], 2)


def score(name: str, checks: Checks) -> str:
    return f"{name}: {len(passed(checks))} passed, {sum(s == 'FAILURE' for s in checks.values())} failed"


def differences(alone: Checks, guarded: Checks) -> list[tuple[str, str]]:
    """Every check that passes alone and not through the guard."""
    return sorted(passed(alone) - passed(guarded))


def unexplained(alone: Checks, guarded: Checks, explained: frozenset[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The checks lost through the guard that no reason explains, and the explained ones no longer lost."""
    lost_now = set(differences(alone, guarded))
    return {"lost": sorted(lost_now - explained), "no longer lost": sorted(explained - lost_now)}


def lost(alone: Checks, guarded: Checks, allowed: frozenset[tuple[str, str]] = BY_DESIGN) -> list[tuple[str, str]]:
    return sorted(key for key in passed(alone) - passed(guarded) if key not in allowed and key[0] not in SUPERGATEWAY_ONLY_FAILURES)


@pytest.fixture
def alone() -> dict[tuple[str, ...], Checks]:
    """The fixture alone over the SDK's Streamable HTTP, per selection (baselines)."""
    return {sel: checks(name) for sel, name in REFERENCES.items()}


@pytest.mark.timeout(900)  # the baselines run live when made with other versions
def test_the_handshake_sets_cover_the_fixtures_scenarios(alone: dict[tuple[str, ...], Checks]) -> None:
    """The sets were dealt from the checked-in baseline: they must cover every scenario of the one in use."""
    assert {scenario for scenario, _ in alone[HANDSHAKE]} == {s for one in HANDSHAKE_SETS for s in one}, \
        "the suite's scenarios changed: refresh the baselines (fixtures/baselines.py)"


def serve_through(tmp: Path, selection: tuple[str, ...]) -> Checks:
    """``serve`` (allow-all, a grant chain for every tool, resource and prompt) -> the fixture over stdio."""
    key, pub = generate_keypair()
    (tmp / "idp.jwk").write_text(json.dumps(public_jwk(pub)))
    port = free_port()
    url = f"http://localhost:{port}/mcp"
    config = write_guard_config(tmp / "guard", {"conformance": stdio_upstream(conformance_server_command(), prefix=False)},
                                ALLOW_ALL, trust={"issuers": {"corp-idp": str(tmp / "idp.jwk")}})
    token = issue_grant(key, "corp-idp", "alice", "agent", ["conformance/*"], resources=["conformance/**"], prompts=["conformance/*"])
    with serve_http([str(mcp_guard_bin()), "serve", "--config", str(config), "--port", str(port)], port, log=tmp / "serve.log"):
        return run_next(url, tmp / "results", selection, bearer=token)


@pytest.mark.timeout(900)
def test_2026_07_28_scenarios_through_serve_lose_nothing(alone: dict[tuple[str, ...], Checks], tmp_path: Path) -> None:
    guarded = serve_through(tmp_path, MODERN)
    print(score("2026-07-28 alone", alone[MODERN]), "|", score("serve", guarded))
    assert differences(alone[MODERN], guarded) == sorted(BY_DESIGN), unexplained(alone[MODERN], guarded, BY_DESIGN)
    assert ("server-stateless", "sep-2575-http-server-method-not-found-404-ping") in passed(guarded)
    assert ("http-header-validation", "sep-2243-server-reject-invalid-headers") in passed(guarded)


@pytest.mark.timeout(900)
def test_2026_07_28_scenarios_through_run_lose_nothing_but_the_http_checks(alone: dict[tuple[str, ...], Checks],
                                                                        tmp_path: Path) -> None:
    """``fixtures/stdio_bridge.py`` (HTTP to stdio, nothing translated) -> ``mcp-guard run`` -> the fixture."""
    config = write_guard_config(tmp_path / "guard", {"conformance": stdio_upstream(conformance_server_command(), prefix=False)},
                                ALLOW_ALL)
    port = free_port()
    bridge = [str(VENV_BIN / "python"), str(STDIO_BRIDGE), "--port", str(port), "--", *guard_command(config)]
    with serve_http(bridge, port, log=tmp_path / "bridge.log"):
        guarded = run_next(f"http://localhost:{port}/mcp", tmp_path / "results", MODERN)
    print(score("2026-07-28 alone", alone[MODERN]), "|", score("run", guarded))
    assert differences(alone[MODERN], guarded) == sorted(BY_DESIGN | NOT_ON_STDIO), \
        unexplained(alone[MODERN], guarded, BY_DESIGN | NOT_ON_STDIO)
    assert ("server-stateless", "sep-2575-request-meta-invalid-missing-meta") in passed(guarded)


@pytest.mark.timeout(900)
def test_handshake_scenarios_of_the_new_line_through_serve_lose_nothing(alone: dict[tuple[str, ...], Checks],
                                                                        tmp_path: Path) -> None:
    guarded = serve_through(tmp_path, HANDSHAKE)
    print(score("2025-11-25 alone", alone[HANDSHAKE]), "|", score("serve", guarded))
    assert not lost(alone[HANDSHAKE], guarded), lost(alone[HANDSHAKE], guarded)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenarios", HANDSHAKE_SETS, ids=[f"set{i}" for i in range(1, len(HANDSHAKE_SETS) + 1)])
def test_handshake_scenarios_of_the_new_line_through_run_lose_nothing(alone: dict[tuple[str, ...], Checks],
                                                                      tmp_path: Path, scenarios: tuple[str, ...]) -> None:
    """supergateway (stdio to Streamable HTTP, stateful) -> ``mcp-guard run`` -> the fixture."""
    config = write_guard_config(tmp_path / "guard", {"conformance": stdio_upstream(conformance_server_command(), prefix=False)},
                                ALLOW_ALL)
    port = free_port()
    gateway = [str(tool_path("supergateway")), "--stdio", shlex.join(guard_command(config)), "--outputTransport",
               "streamableHttp", "--stateful", "--port", str(port)]
    with serve_http(gateway, port, log=tmp_path / "supergateway.log"):
        guarded = run_next(f"http://localhost:{port}/mcp", tmp_path / "results", HANDSHAKE, scenarios=scenarios)
    expected = {key: status for key, status in alone[HANDSHAKE].items() if key[0] in scenarios}
    print(score("2025-11-25 alone", expected), "|", score("run", guarded))
    assert not lost(expected, guarded), lost(expected, guarded)


@pytest.mark.timeout(300)
def test_guard_as_client_puts_an_upstreams_input_requests_to_its_host(tmp_path: Path) -> None:
    """``sep-2322-client-request-state``: a 2026-07-28 upstream answers ``input_required``; the guard
    asks its (handshake-era) host, retries as a new request with ``inputResponses`` and the
    ``requestState`` exactly as given (none when none was given), and keeps rounds of parallel
    calls apart."""
    statuses = run_client_scenario("sep-2322-client-request-state", tmp_path, next_suite=True, protocol="auto")
    assert len(statuses) == 5 and set(statuses.values()) == {"SUCCESS"}, (tmp_path / "conformance.log").read_text()
