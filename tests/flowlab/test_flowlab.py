"""The flow lab: every scenario under every set-up, scripted agents through real ``mcp-guard run``
processes in front of real servers (mcp-server-fetch reading a loopback site, server-filesystem,
server-memory) and the fixture mail and bank sinks.  Each run must give the outcome the scenario
expects; a stopped attack must have been stopped by the guard, never by a broken step."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import requires_tools

from flowlab.lab import SETUPS, run
from flowlab.scenarios import SCENARIOS, Scenario
from flowlab.table import DOC, doc_table, expected_table, missing

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_tools("mcp-server-filesystem", "mcp-server-memory"), pytest.mark.timeout(180)]


def _cases() -> list[object]:
    cases: list[object] = []
    for s in SCENARIOS:
        for setup in SETUPS:
            why = missing(setup)
            marks = [pytest.mark.xfail(strict=True, reason=f"needs the flow engine: {why}")] if why else []
            cases.append(pytest.param(s, setup, id=f"{s.name}-{setup}", marks=marks))
    return cases


@pytest.mark.parametrize(("scenario", "setup"), _cases())
async def test_scenario(scenario: Scenario, setup: str, tmp_path: Path) -> None:
    outcome = await run(setup, scenario.upstreams, scenario.grant, scenario.steps, scenario.succeeded,  # type: ignore[arg-type]
                        tmp_path)
    log = "\n".join(outcome.log)
    good = scenario.good(outcome.succeeded)
    assert good == scenario.expect[setup], f"{scenario.kind} {scenario.name} under {setup}:\n{log}"
    if scenario.kind == "attack" and good:
        assert outcome.log[-1].split(": ", 1)[1].startswith("refused: mcp-guard"), log  # the guard stopped it
    if scenario.kind == "benign" and not good:
        assert "refused: mcp-guard" in outcome.log[-1], log  # refused by the guard, not broken


def test_the_lab_has_the_scenarios_it_promises() -> None:
    kinds = [s.kind for s in SCENARIOS]
    assert len(SCENARIOS) >= 20 and kinds.count("benign") >= 3 and kinds.count("attack") >= 10
    assert all(not s.expect["nothing"] for s in SCENARIOS if s.kind == "attack")  # every attack works unguarded
    assert all(s.expect["grant+flow"] for s in SCENARIOS)  # the intended deployment


def test_the_docs_show_the_table_the_runs_assert() -> None:
    assert doc_table(DOC.read_text(encoding="utf-8")) == expected_table().strip(), (
        "docs/flow.md's table is stale: run scripts/flowlab --write")
