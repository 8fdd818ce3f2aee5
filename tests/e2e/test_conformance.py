"""Transparency, measured by the official suite: `@modelcontextprotocol/conformance` server scenarios
(active suite) run against the project's fixture alone and through `mcp-guard run`.

The suite speaks only Streamable HTTP, so a stdio server sits behind supergateway (a
stdio-to-HTTP bridge). supergateway has no Host/Origin check, so `dns-rebinding-protection` fails behind it
whatever is inside; every other check that passes against the fixture directly must pass through
the guard too (allow-all policy, `prefix: false`).

The reference sides, the fixture alone and supergateway alone in front of it, are baselines
(``fixtures/baselines.py``): checked in, and run live only when made with other versions than those
installed.  The guarded runs, one test per set of scenarios, always run live.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from fixtures import (
    ALLOW_ALL,
    PYTHON,
    conformance_server_command,
    guard_command,
    requires_tools,
    stdio_upstream,
    tool_path,
    tools_env,
    write_guard_config,
)
from fixtures.baselines import checks, scenario_sets
from fixtures.suites import NEXT_SUITE, Checks, failed, passed, through_supergateway

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_tools("conformance", "supergateway")]

SUPERGATEWAY_ONLY_FAILURES = frozenset({"dns-rebinding-protection"})

REFERENCE = "active-alone"
SETS = scenario_sets(REFERENCE, 2)
"""The active suite's scenarios in two sets of about equal cost, one guarded test each (a set runs its
scenarios a few at once, so two sets keep both test workers busy)."""


def _report(missing: set[tuple[str, str]], details: object) -> str:
    lines = [f"  {scenario} / {check}" for scenario, check in sorted(missing)]
    return f"{len(missing)} checks pass directly but not here (details: {details}):\n" + "\n".join(lines)


@pytest.fixture
def direct() -> Checks:
    """The fixture alone, over the SDK's own Streamable HTTP (a baseline)."""
    return checks(REFERENCE)


@pytest.mark.timeout(300)  # the baseline runs live when made with other versions
def test_fixture_passes_the_active_suite(direct: Checks) -> None:
    assert not failed(direct), f"fixture fails: {sorted(failed(direct))}"
    assert len(passed(direct)) >= 40
    assert {scenario for scenario, _ in direct} >= {"tools-call-sampling", "tools-call-elicitation", "dns-rebinding-protection"}
    # the guarded sets were dealt from the checked-in baseline: they must cover every scenario of this one
    assert {scenario for scenario, _ in direct} == {s for one in SETS for s in one}, \
        "the suite's scenarios changed: refresh the baselines (fixtures/baselines.py)"


@pytest.mark.timeout(300)
def test_supergateway_baseline(direct: Checks) -> None:
    """The bridge alone (fixture over stdio) loses nothing but its own Host/Origin check."""
    via = checks("active-supergateway")
    missing = {key for key in passed(direct) - passed(via) if key[0] not in SUPERGATEWAY_ONLY_FAILURES}
    assert not missing, _report(missing, "the active-supergateway baseline")
    assert {s for s, _ in failed(via)} <= SUPERGATEWAY_ONLY_FAILURES


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenarios", SETS, ids=[f"set{i}" for i in range(1, len(SETS) + 1)])
def test_guard_is_transparent_to_the_suite(direct: Checks, tmp_path: Path, scenarios: tuple[str, ...]) -> None:
    """supergateway -> mcp-guard run (allow-all, prefix: false) -> fixture over stdio scores like the fixture."""
    config = write_guard_config(
        tmp_path / "guard",
        {"conformance": stdio_upstream(conformance_server_command(), prefix=False)},
        ALLOW_ALL,
    )
    via = through_supergateway(guard_command(config), tmp_path, scenarios)
    expected = {key for key in passed(direct) if key[0] in scenarios}
    missing = {key for key in expected - passed(via) if key[0] not in SUPERGATEWAY_ONLY_FAILURES}
    assert not missing, _report(missing, tmp_path)


# --------------------------------------------------------------------------- the guard as the suite's client

GUARD_CLIENT = Path(__file__).resolve().parents[1] / "fixtures" / "conformance_client.py"
requires_next_suite = pytest.mark.skipif(not NEXT_SUITE.is_file(), reason="conformance-next missing from .tools; run scripts/setup")


def run_client_scenario(scenario: str, out: Path, *, next_suite: bool = False, protocol: str = "legacy") -> dict[str, str]:
    """`conformance client --scenario SCENARIO` with a host -> `mcp-guard run` -> the scenario's server as
    the guard's HTTP upstream (``protocol``); every check id -> its worst status."""
    suite = [str(tool_path("node")), str(NEXT_SUITE)] if next_suite else [str(tool_path("conformance"))]
    command = shlex.join([PYTHON, str(GUARD_CLIENT)])  # a fork of the worker's pre-imported zygote
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
