"""The flow lab's result table: attacks stopped and benign tasks completed per set-up.

``python -m flowlab.table`` (from ``tests/``, see scripts/flowlab) runs every scenario under every
set-up through a real ``mcp-guard serve`` per set-up, as the lab's tests do, and prints the table
docs/flow.md shows; ``--write`` puts it there.
``expected_table()`` renders the same table from the scenarios' expectations, which the lab's
tests assert one real run at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from fixtures import ROOT

from flowlab.lab import FLOW_POLICY, SETUPS, Serves, run
from flowlab.scenarios import SCENARIOS, Scenario
from mcp_guard.grants import issue_grant

DOC = ROOT / "docs" / "flow.md"
BEGIN, END = "<!-- flow-lab table: begin -->", "<!-- flow-lab table: end -->"


def _records_labels() -> bool:
    """Whether the call pipeline records what requests bring (calls the store's ``flow_add``)."""
    package = ROOT / "mcp_guard"
    return any(".flow_add(" in p.read_text(encoding="utf-8") for p in package.rglob("*.py") if "state" not in p.parts)


def missing(setup: str) -> str | None:
    """Why ``setup`` cannot run on this tree (the flow engine is not there), or None."""
    if setup in ("flow", "grant+flow") and not _records_labels():
        return "the call pipeline does not record session labels yet"
    if setup in ("flow", "grant+flow"):
        from mcp_guard.errors import ConfigError
        from mcp_guard.policy import load

        try:
            load(FLOW_POLICY)
        except ConfigError as exc:
            return f"the policy engine does not take the flow policy yet ({exc})"
    if setup == "grant+flow" and "label_ceiling" not in inspect.signature(issue_grant).parameters:
        return "grants do not take labels, label_ceiling and endorsements yet"
    return None


def render(good: Mapping[tuple[str, str], bool | None]) -> str:
    """The markdown table from (scenario, set-up) -> good outcome (None: not run)."""
    head = "| set-up | attacks stopped | benign tasks completed |\n|---|---|---|\n"
    rows = []
    for setup in SETUPS:
        cells = []
        for kind in ("attack", "benign"):
            runs = [good[(s.name, setup)] for s in SCENARIOS if s.kind == kind]
            cells.append("not run" if None in runs else f"{sum(bool(r) for r in runs)} of {len(runs)}")
        rows.append(f"| {setup} | {cells[0]} | {cells[1]} |")
    detail = "\n\n| scenario | kind | " + " | ".join(SETUPS) + " |\n|---|---|" + "---|" * len(SETUPS) + "\n"
    for s in SCENARIOS:
        marks = [_mark(s, good[(s.name, setup)]) for setup in SETUPS]
        detail += f"| {s.name} | {s.kind} | " + " | ".join(marks) + " |\n"
    return head + "\n".join(rows) + detail


def _mark(s: Scenario, good: bool | None) -> str:
    if good is None:
        return "not run"
    if s.kind == "attack":
        return "stopped" if good else "**leaked**"
    return "done" if good else "**refused**"


def expected_table() -> str:
    return render({(s.name, setup): (None if missing(setup) else s.expect[setup]) for s in SCENARIOS for setup in SETUPS})


def doc_table(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


async def measure() -> dict[tuple[str, str], bool | None]:
    out: dict[tuple[str, str], bool | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        serves = Serves(Path(tmp) / "serve")
        try:
            for setup in SETUPS:
                for i, s in enumerate(SCENARIOS):
                    if missing(setup):
                        out[(s.name, setup)] = None
                        continue
                    outcome = await run(setup, s.upstreams, s.grant, s.steps, s.succeeded, Path(tmp) / f"{setup}-{i}",
                                        serves.get(setup))
                    out[(s.name, setup)] = s.good(outcome.succeeded)
                    print(f"{setup:>10} {s.name}: {_mark(s, out[(s.name, setup)])}", file=sys.stderr)
        finally:
            serves.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the table into docs/flow.md")
    args = parser.parse_args()
    table = render(asyncio.run(measure()))
    print(table)
    if args.write:
        text = DOC.read_text(encoding="utf-8")
        before, rest = text.split(BEGIN, 1)
        DOC.write_text(f"{before}{BEGIN}\n{table.strip()}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")


if __name__ == "__main__":
    main()
