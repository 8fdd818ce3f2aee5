"""Everything the suite needs is installed: a missing piece FAILS here instead of quietly turning
other tests into skips.  ``scripts/setup`` installs all of it (and stops when it cannot), so on a
machine where set-up succeeded no test is skipped — except the one permission test that cannot
mean anything as root (root ignores directory permissions)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest
from fixtures import ROOT, TOOLS_BIN, VENV_BIN

SETUP = ROOT / "scripts" / "setup"
HOW = "run scripts/setup (it installs it, or says why it cannot)"


def npm_bins() -> list[str]:
    """The npm tool binaries scripts/setup promises (its own check list), plus Node itself."""
    found = re.search(r"^for bin in ([^;]+); do", SETUP.read_text(encoding="utf-8"), re.M)
    assert found, "scripts/setup no longer lists its npm tool binaries in a `for bin in ...; do` loop"
    return ["node", *found.group(1).split()]


def apt_commands() -> list[str]:
    found = re.search(r"^declare -A APT_TOOLS=\((.*)\)$", SETUP.read_text(encoding="utf-8"), re.M)
    assert found, "scripts/setup no longer declares APT_TOOLS"
    return re.findall(r"\]=(\S+)", found.group(1))


@pytest.mark.parametrize("name", npm_bins())
def test_npm_tool_is_installed(name: str) -> None:
    assert os.access(TOOLS_BIN / name, os.X_OK), f"{TOOLS_BIN / name} is missing: {HOW}"


@pytest.mark.parametrize("command", apt_commands())
def test_debian_tool_is_installed(command: str) -> None:
    assert shutil.which(command) or shutil.which(command, path="/usr/sbin"), f"`{command}` is not on PATH: {HOW}"


def test_required_apt_tools_are_the_ones_the_tests_use() -> None:
    assert {"redis-server", "chromium", "haproxy"} <= set(apt_commands())


@pytest.mark.parametrize("name", ["mcp-server-time", "mcp-server-git", "mcp-server-fetch", "uv"])
def test_python_dev_tools_are_installed(name: str) -> None:
    assert (VENV_BIN / name).exists(), f"{VENV_BIN / name} is missing: {HOW}"


def test_phoenix_is_importable() -> None:
    assert importlib.util.find_spec("phoenix") is not None, f"Arize Phoenix (the otel-backend extra) is not installed: {HOW}"


def test_dev_full_exists() -> None:
    assert Path("/dev/full").exists(), "/dev/full is needed to make every audit write fail (a Linux device)"
