"""Transparency, measured by the official suite: `@modelcontextprotocol/conformance` server scenarios
(active suite) run against the project's fixture alone and through `mcp-guard run`.

The suite speaks only Streamable HTTP, so a stdio server sits behind supergateway (a
stdio-to-HTTP bridge). supergateway has no Host/Origin check, so `dns-rebinding-protection` fails behind it
whatever is inside; every other check that passes against the fixture directly must pass through
the guard too (allow-all policy, `prefix: false`).

The fixture's own score is checked in (``fixtures/scores/``): ``test_reference_score_of_the_fixture_alone``
runs the fixture alone and asserts it still scores exactly that, while the guarded runs, one test per
set of scenarios, compare with it in parallel instead of queueing behind a reference run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from fixtures import (
    ALLOW_ALL,
    conformance_server_command,
    free_port,
    guard_command,
    requires_tools,
    serve_http,
    stdio_upstream,
    tool_path,
    tools_env,
    write_guard_config,
)
from fixtures.scores import Checks, assert_reference, reference, scenario_sets
from fixtures.suite_runs import run_concurrently

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_tools("conformance", "supergateway")]

SUPERGATEWAY_ONLY_FAILURES = frozenset({"dns-rebinding-protection"})
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")

REFERENCE = "0.1.16-active"
SETS = scenario_sets(REFERENCE, 2)
"""The active suite's scenarios in two sets of about equal cost, one guarded test each (a set runs its
scenarios a few at once, so two sets keep both test workers busy)."""

BEARER_PRELOAD = Path(__file__).resolve().parents[1] / "fixtures" / "conformance_bearer.mjs"


def run_conformance(url: str, out_dir: Path, *, timeout: float = 240.0, bearer: str | None = None,
                    scenarios: Sequence[str] = ()) -> Checks:
    """Run the active server suite (or only ``scenarios``, one suite run each, a few at once) against ``url``; return
    every check's status from its checks.json.  With ``bearer`` the suite itself sends
    ``Authorization: Bearer BEARER`` to ``url``'s origin (a preload module wraps its HTTP clients; no
    proxy in between)."""
    suite = [str(tool_path("conformance")), "server", "--url", url, "-o", str(out_dir)]
    env = tools_env()
    if bearer is not None:
        suite = [str(tool_path("node")), "--import", str(BEARER_PRELOAD), str(tool_path("conformance").resolve()), *suite[1:]]
        env = tools_env({"MCP_BEARER_TOKEN": bearer, "MCP_BEARER_ORIGIN": url})
    runs = run_concurrently([[*suite, *selection] for selection in [["--scenario", s] for s in scenarios] or [[]]],
                            env=env, timeout=timeout)
    (out_dir / "conformance.log").write_text("".join(run.stdout + run.stderr for run in runs), encoding="utf-8")
    proc = runs[-1]
    checks: Checks = {}
    for checks_file in sorted(out_dir.glob("*/checks.json")):
        m = _RESULT_DIR.match(checks_file.parent.name)
        if not m:
            continue
        for check in json.loads(checks_file.read_text(encoding="utf-8")):
            checks[(m["scenario"], str(check["id"]))] = str(check["status"])
    assert checks, f"conformance produced no results (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return checks


def passed(checks: Checks) -> set[tuple[str, str]]:
    return {key for key, status in checks.items() if status == "SUCCESS"}


def failed(checks: Checks) -> set[tuple[str, str]]:
    return {key for key, status in checks.items() if status == "FAILURE"}


def _report(missing: set[tuple[str, str]], out_dir: Path) -> str:
    lines = [f"  {scenario} / {check}" for scenario, check in sorted(missing)]
    return f"{len(missing)} checks pass directly but not here (details under {out_dir}):\n" + "\n".join(lines)


@pytest.fixture
def direct() -> Checks:
    """The fixture alone, over the SDK's own Streamable HTTP: the checked-in reference score."""
    return reference(REFERENCE, "0.1.16")


def _through_supergateway(argv: Sequence[str], out: Path, scenarios: Sequence[str] = ()) -> Checks:
    port = free_port()
    gateway = [str(tool_path("supergateway")), "--stdio", shlex.join(argv), "--outputTransport", "streamableHttp",
               "--stateful", "--port", str(port)]
    with serve_http(gateway, port, log=out / "supergateway.log"):
        return run_conformance(f"http://localhost:{port}/mcp", out, scenarios=scenarios)


@pytest.mark.timeout(300)
def test_reference_score_of_the_fixture_alone(tmp_path: Path) -> None:
    """The fixture alone scores exactly the checked-in reference, which passes the whole active suite."""
    port = free_port()
    with serve_http(conformance_server_command("--http", "--port", str(port)), port, log=tmp_path / "server.log") as url:
        alone = run_conformance(url, tmp_path)
    assert_reference(REFERENCE, "0.1.16", alone)


def test_fixture_passes_the_active_suite(direct: Checks) -> None:
    assert not failed(direct), f"fixture fails: {sorted(failed(direct))}"
    assert len(passed(direct)) >= 40
    assert {scenario for scenario, _ in direct} >= {"tools-call-sampling", "tools-call-elicitation", "dns-rebinding-protection"}


@pytest.mark.timeout(300)
def test_supergateway_baseline(direct: Checks, tmp_path: Path) -> None:
    """The bridge alone (fixture over stdio) loses nothing but its own Host/Origin check."""
    via = _through_supergateway(conformance_server_command(), tmp_path)
    missing = {key for key in passed(direct) - passed(via) if key[0] not in SUPERGATEWAY_ONLY_FAILURES}
    assert not missing, _report(missing, tmp_path)
    assert {s for s, _ in failed(via)} <= SUPERGATEWAY_ONLY_FAILURES


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenarios", SETS, ids=[f"set{i}" for i in range(1, len(SETS) + 1)])
def test_guard_is_transparent_to_the_suite(direct: Checks, tmp_path: Path, scenarios: tuple[str, ...]) -> None:
    """supergateway -> mcp-guard run (allow-all, prefix: false) -> fixture over stdio scores like the fixture."""
    config = write_guard_config(
        tmp_path / "guard",
        {"conformance": stdio_upstream(conformance_server_command(), prefix=False)},
        ALLOW_ALL,
    )
    via = _through_supergateway(guard_command(config), tmp_path, scenarios)
    expected = {key for key in passed(direct) if key[0] in scenarios}
    missing = {key for key in expected - passed(via) if key[0] not in SUPERGATEWAY_ONLY_FAILURES}
    assert not missing, _report(missing, tmp_path)


# --------------------------------------------------------------------------- the guard as the suite's client

GUARD_CLIENT = Path(__file__).resolve().parents[1] / "fixtures" / "conformance_client.py"
NEXT_SUITE = tool_path("node").parent.parent / "conformance-next" / "dist" / "index.js"  # 0.2.x: the 2026-07-28 era
requires_next_suite = pytest.mark.skipif(not NEXT_SUITE.is_file(), reason="conformance-next missing from .tools; run scripts/setup")


def run_client_scenario(scenario: str, out: Path, *, next_suite: bool = False, protocol: str = "legacy") -> dict[str, str]:
    """`conformance client --scenario SCENARIO` with a host -> `mcp-guard run` -> the scenario's server as
    the guard's HTTP upstream (``protocol``); every check id -> its worst status."""
    suite = [str(tool_path("node")), str(NEXT_SUITE)] if next_suite else [str(tool_path("conformance"))]
    command = shlex.join([sys.executable, str(GUARD_CLIENT)])
    proc = subprocess.run([*suite, "client", "--command", command, "--scenario", scenario, "-o", str(out), "--timeout", "90000"],
                          capture_output=True, text=True, timeout=180, env=tools_env({"GUARD_UPSTREAM_PROTOCOL": protocol}))
    (out / "conformance.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    rank = {"SUCCESS": 0, "WARNING": 1, "FAILURE": 2}
    statuses: dict[str, str] = {}
    for checks_file in sorted(out.glob("**/checks.json")):
        for check in json.loads(checks_file.read_text(encoding="utf-8")):
            status, key = str(check["status"]), str(check["id"])
            if status not in ("INFO", "SKIPPED") and rank.get(status, 2) >= rank.get(statuses.get(key, "SUCCESS"), 2):
                statuses[key] = status
    assert statuses, f"conformance produced no results; see {out / 'conformance.log'}"
    return statuses


@pytest.mark.timeout(180)
def test_guard_as_client_resumes_a_closed_stream_after_the_retry_delay(tmp_path: Path) -> None:
    """`sse-retry`: the tools/call stream closes after a priming event (id, retry: 500 ms); the guard
    waits the retry delay and resumes with GET + Last-Event-ID, where the answer arrives."""
    statuses = run_client_scenario("sse-retry", tmp_path)
    assert statuses == {"client-sse-graceful-reconnect": "SUCCESS", "client-sse-retry-timing": "SUCCESS",
                        "client-sse-last-event-id": "SUCCESS"}, (tmp_path / "conformance.log").read_text()


@requires_next_suite
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", ["http-custom-headers", "http-invalid-tool-headers", "http-standard-headers",
                                      "request-metadata"])
def test_guard_as_a_2026_07_28_client_sends_and_checks_the_http_headers(tmp_path: Path, scenario: str) -> None:
    """Mcp-Param-* mirrored from x-mcp-header arguments (Base64 where a value is not plain ASCII), tools with
    an invalid x-mcp-header never called, the standard headers and ``_meta`` on every request, and
    ``server/discover`` asked again when refused as an unsupported version that lists 2026-07-28."""
    statuses = run_client_scenario(scenario, tmp_path, next_suite=True, protocol="auto")
    failed = {k: v for k, v in statuses.items() if v != "SUCCESS"}
    assert not failed, (tmp_path / "conformance.log").read_text()
