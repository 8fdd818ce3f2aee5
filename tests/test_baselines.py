"""Baselines (``fixtures/baselines.py``) are read only when made with what is installed now: any other
version, digest or part runs the reference live, so the guard is never compared with a stale one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fixtures import baselines
from fixtures.baselines import BASELINES, BASELINES_DIR, Baseline, npm_closure, python_versions

MADE_WITH = {"python": "3.11.7", "mcp": "2.3.0", "mcp requirements": "aaaa", "node": "22.23.3",
             "@modelcontextprotocol/conformance": "0.1.16", "conformance_server.py": "bbbb"}


class Probe:
    """A baseline whose parts the test sets and whose live runs it counts."""

    def __init__(self, directory: Path) -> None:
        self.parts = dict(MADE_WITH)
        self.runs = 0
        self.directory = directory
        self.baseline = Baseline("probe", lambda: dict(self.parts), self._run)

    def _run(self, out: Path) -> Any:
        self.runs += 1
        return {"run": self.runs}

    def take(self) -> Any:
        return self.baseline.take(self.directory)


def test_a_baseline_made_with_what_is_installed_is_read_not_run(tmp_path: Path) -> None:
    probe = Probe(tmp_path)
    assert probe.baseline.refresh(tmp_path) == {"run": 1}
    stored = json.loads((tmp_path / "probe.json").read_text())
    assert stored == {"made_with": MADE_WITH, "result": {"run": 1}}
    assert probe.take() == {"run": 1} and probe.take() == {"run": 1}
    assert probe.runs == 1


@pytest.mark.parametrize("part", sorted(MADE_WITH))
def test_another_version_of_any_part_runs_the_reference_live(tmp_path: Path, part: str) -> None:
    probe = Probe(tmp_path)
    probe.baseline.refresh(tmp_path)
    before = (tmp_path / "probe.json").read_text()
    probe.parts[part] = "upgraded"
    with pytest.warns(UserWarning, match=rf"baseline probe was run live .*{part}: {MADE_WITH[part]} -> upgraded.*--refresh probe"):
        assert probe.take() == {"run": 2}
    assert probe.runs == 2
    assert (tmp_path / "probe.json").read_text() == before  # only --refresh writes


def test_a_part_added_or_dropped_runs_the_reference_live(tmp_path: Path) -> None:
    probe = Probe(tmp_path)
    probe.baseline.refresh(tmp_path)
    probe.parts["supergateway"] = "4.0.0"
    with pytest.warns(UserWarning, match="supergateway: None -> 4.0.0"):
        assert probe.take() == {"run": 2}
    del probe.parts["supergateway"], probe.parts["node"]
    with pytest.warns(UserWarning, match="node: 22.23.3 -> None"):
        assert probe.take() == {"run": 3}


def test_a_missing_baseline_runs_the_reference_live(tmp_path: Path) -> None:
    probe = Probe(tmp_path)
    with pytest.warns(UserWarning, match="baseline probe was run live"):
        assert probe.take() == {"run": 1}
    assert not (tmp_path / "probe.json").exists()


def test_every_baseline_is_keyed_on_the_versions_of_its_parts() -> None:
    for name, baseline in BASELINES.items():
        made_with = baseline.made_with()
        assert {"python", "mcp", "mcp requirements" if "mcp requirements" in made_with else "mcp+pyyaml requirements",
                "node", "node dependencies"} <= made_with.keys(), name
        suite = "conformance-next" if name.startswith("next-") else "@modelcontextprotocol/conformance"
        assert {suite, f"{suite} dependencies"} <= made_with.keys(), name
        fixture = "conformance_auth_client.py" if name.startswith("auth-sdk-") else "conformance_server.py"
        assert len(made_with[fixture]) == 16, name
        assert ("supergateway" in made_with) == ("supergateway" in name), name


def test_editing_the_fixture_makes_its_baselines_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "conformance_server.py"
    copy.write_bytes(baselines.CONFORMANCE_SERVER.read_bytes())
    monkeypatch.setattr(baselines, "CONFORMANCE_SERVER", copy)
    before = BASELINES["active-alone"].made_with()
    copy.write_bytes(copy.read_bytes() + b"\n# one more line\n")
    after = BASELINES["active-alone"].made_with()
    assert {k for k in before if before[k] != after[k]} == {"conformance_server.py"}


def test_every_baseline_is_checked_in_and_every_file_is_a_baseline() -> None:
    assert {p.stem for p in BASELINES_DIR.glob("*.json")} == set(BASELINES)


def _package(where: Path, name: str, version: str, deps: dict[str, str] | None = None) -> None:
    where.mkdir(parents=True)
    (where / "package.json").write_text(json.dumps({"name": name, "version": version, "dependencies": deps or {}}))


def test_the_npm_closure_follows_nodes_resolution(tmp_path: Path) -> None:
    """A package's own nested copy of a dependency is the one it loads, not the top-level one."""
    root = tmp_path / "node_modules"
    _package(root / "suite", "suite", "1.0.0", {"sdk": "^2", "express": "^5"})
    _package(root / "suite" / "node_modules" / "sdk", "sdk", "2.0.0", {"zod": "^3"})
    _package(root / "sdk", "sdk", "1.0.0")
    _package(root / "express", "express", "5.0.0")
    _package(root / "zod", "zod", "3.0.0")
    closure = npm_closure.__wrapped__
    first = closure("suite", root)
    assert first["suite"] == "1.0.0"
    (root / "sdk" / "package.json").write_text(json.dumps({"name": "sdk", "version": "1.9.9"}))  # not loaded by suite
    assert closure("suite", root) == first
    for upgraded in (root / "suite" / "node_modules" / "sdk", root / "zod"):  # loaded, directly or through sdk
        meta = json.loads((upgraded / "package.json").read_text())
        (upgraded / "package.json").write_text(json.dumps({**meta, "version": "9.9.9"}))
        assert closure("suite", root)["suite dependencies"] != first["suite dependencies"]
    assert closure("absent", root) == {"absent": "missing"}


def test_the_python_key_follows_the_direct_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {
        "mcp": ("2.3.0", ["pydantic>=2", "pyjwt[crypto]>=2", "typer>=0.16; extra == 'cli'", "pywin32; sys_platform == 'win32'"]),
        "pydantic": ("2.12.0", ["pydantic-core==2.41"]),
        "pydantic-core": ("2.41.0", []),
        "pyjwt": ("2.10.1", ["cryptography>=3; extra == 'crypto'"]),
        "cryptography": ("46.0.0", []),
        "typer": ("0.16.0", []),
    }

    def distribution(name: str) -> SimpleNamespace:
        if name not in installed:
            raise baselines.importlib.metadata.PackageNotFoundError(name)
        version, requires = installed[name]
        return SimpleNamespace(version=version, requires=requires)

    monkeypatch.setattr(baselines.importlib.metadata, "distribution", distribution)
    key = python_versions.__wrapped__
    first = key("mcp")
    assert first["mcp"] == "2.3.0" and "mcp requirements" in first
    for name, version in (("pydantic", "2.13.0"), ("pyjwt", "2.11.0"), ("mcp", "2.4.0")):
        installed[name] = (version, installed[name][1])
        changed = key("mcp")
        assert changed != first, name
        first = changed
    for name in ("pydantic-core", "cryptography", "typer"):  # deeper, or behind an extra nobody asks for
        installed[name] = ("99.0.0", [])
        assert key("mcp") == first, name
