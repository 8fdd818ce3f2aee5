"""The flow lab: every scenario under every set-up, scripted agents through a real ``mcp-guard
serve`` process per set-up (a session per scenario) in front of real servers (mcp-server-fetch
reading a loopback site, server-filesystem, server-memory) and the fixture mail and bank sinks;
and one scenario per flow mechanism of the intended deployment (grant + flow) once more through a
real ``mcp-guard run`` process of its own, so both faces are covered end to end.  Each run must
give the outcome the scenario expects; a stopped attack must have been stopped by the guard,
never by a broken step."""

from __future__ import annotations

import atexit
from pathlib import Path

import pytest
from fixtures import requires_tools

from flowlab.lab import SETUPS, Outcome, Served, Serves, run
from flowlab.scenarios import SCENARIOS, Scenario
from flowlab.table import DOC, doc_table, expected_table, missing

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_tools("mcp-server-filesystem", "mcp-server-memory"), pytest.mark.timeout(180)]


THROUGH_RUN = {  # one scenario per flow mechanism, under grant + flow through `mcp-guard run`
    "pay-bill-from-endorsed-mail": "a source the grant endorses brings no label",
    "exfiltrate-by-mail": "session.labels all_of and carries on a mail body",
    "encoded-leak-base64-url": "carries through an encoding",
    "payee-substitution-bill-memo": "parts: only the outsider-written field of an answer",
    "short-message-id": "carries with match: token",
    "launder-through-sub-agent": "a delegated grant's label ceiling in a helper's session",
}


def _cases() -> list[object]:
    """Set-up by set-up (an xdist group each), scenario by scenario; each worker starts a set-up's
    serve at most once (``served``)."""
    cases: list[object] = []
    for setup in SETUPS:
        why = missing(setup)
        marks = [pytest.mark.xdist_group(f"flowlab-{setup}")]
        if why:
            marks.append(pytest.mark.xfail(strict=True, reason=f"needs the flow engine: {why}"))
        cases.extend(pytest.param(s, setup, id=f"{s.name}-{setup}", marks=marks) for s in SCENARIOS)
    return cases


_SERVES: list[Serves] = []


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Served:
    """The serve of this test's set-up, started by the first of its scenarios and kept for the
    worker's life (stopped when it exits): whatever order the worker gets the tests in, each
    set-up starts once."""
    if not _SERVES:
        _SERVES.append(Serves(tmp_path_factory.mktemp("flowlab")))
        atexit.register(_SERVES[0].close)
    return _SERVES[0].get(request.node.callspec.params["setup"])


def _check(scenario: Scenario, setup: str, outcome: Outcome) -> None:
    log = "\n".join(outcome.log)
    good = scenario.good(outcome.succeeded)
    assert good == scenario.expect[setup], f"{scenario.kind} {scenario.name} under {setup}:\n{log}"
    if scenario.kind == "attack" and good:
        assert outcome.log[-1].split(": ", 1)[1].startswith("refused: mcp-guard"), log  # the guard stopped it
    if scenario.kind == "benign" and not good:
        assert "refused: mcp-guard" in outcome.log[-1], log  # refused by the guard, not broken


@pytest.mark.parametrize(("scenario", "setup"), _cases())
async def test_scenario(scenario: Scenario, setup: str, served: Served, tmp_path: Path) -> None:
    outcome = await run(setup, scenario.upstreams, scenario.grant, scenario.steps, scenario.succeeded,  # type: ignore[arg-type]
                        tmp_path, served)
    _check(scenario, setup, outcome)


@pytest.mark.skipif(bool(missing("grant+flow")), reason="needs the flow engine")
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.name in THROUGH_RUN], ids=lambda s: s.name)
async def test_scenario_through_run(scenario: Scenario, tmp_path: Path) -> None:
    outcome = await run("grant+flow", scenario.upstreams, scenario.grant, scenario.steps, scenario.succeeded, tmp_path)
    _check(scenario, "grant+flow", outcome)


def test_the_lab_has_the_scenarios_it_promises() -> None:
    assert set(THROUGH_RUN) <= {s.name for s in SCENARIOS}
    kinds = [s.kind for s in SCENARIOS]
    assert len(SCENARIOS) >= 20 and kinds.count("benign") >= 3 and kinds.count("attack") >= 10
    assert all(not s.expect["nothing"] for s in SCENARIOS if s.kind == "attack")  # every attack works unguarded
    assert all(s.expect["grant+flow"] for s in SCENARIOS)  # the intended deployment


def test_the_docs_show_the_table_the_runs_assert() -> None:
    assert doc_table(DOC.read_text(encoding="utf-8")) == expected_table().strip(), (
        "docs/flow.md's table is stale: run scripts/flowlab --write")
