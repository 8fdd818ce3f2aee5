"""A release is built the standard way (``python -m build``: the sdist, then the wheel from the
sdist) and the wheel installs into a fresh venv and runs."""

from __future__ import annotations

import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from fixtures import ROOT

import mcp_guard

pytestmark = [pytest.mark.xdist_group("wheel"), pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def test_the_sdist_and_the_wheel_carry_the_version_and_the_licence(release_dist: Path) -> None:
    dist = release_dist
    version = mcp_guard.__version__
    (sdist,) = dist.glob("mcp_guard-*.tar.gz")
    (wheel,) = dist.glob("mcp_guard-*-py3-none-any.whl")
    assert sdist.name == f"mcp_guard-{version}.tar.gz" and wheel.name == f"mcp_guard-{version}-py3-none-any.whl"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "Dockerfile", "mcp_guard/__init__.py"} <= names
    assert "deploy/kubernetes/deployment.yaml" in names
    assert not any(n.startswith((".venv", ".tools", ".git/", "dist/", "build/")) for n in names)
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
        metadata = whl.read(f"mcp_guard-{version}.dist-info/METADATA").decode()
    assert f"mcp_guard-{version}.dist-info/licenses/LICENSE" in files
    assert "License-Expression: Apache-2.0" in metadata and f"Version: {version}" in metadata
    assert "mcp_guard/py.typed" in files and not any(f.startswith("tests/") for f in files)
    assert "Apache License" in (ROOT / "LICENSE").read_text() and f"[{version}]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_wheel_installs_into_a_fresh_venv_and_runs(release_venv: Path, tmp_path: Path) -> None:
    venv = release_venv  # the wheel and its declared dependencies only, in a new venv (fixtures/release.py)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    version = subprocess.run([str(venv / "bin" / "mcp-guard"), "--version"], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path, env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"mcp-guard, version {mcp_guard.__version__}"
    # the operating pieces came with it: the Prometheus exporter and the JSON log formatter import
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import mcp_guard.serve.admin as a, mcp_guard.logs; a.prometheus_reader()"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
