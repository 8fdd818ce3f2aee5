"""Golden output of ``mcp-guard check`` on broken inputs: every problem, ``file:line:col``, no traceback.

Each directory under ``golden/`` is checked as a real subprocess (cwd = that directory) and its
``expected.txt`` holds the exit code and the combined output.  Regenerate with UPDATE_GOLDEN=1
after reading the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import TOOLS_BIN, VENV_BIN

GOLDEN = Path(__file__).parent / "golden"
MCP_GUARD = Path(sys.executable).parent / "mcp-guard"


def run_check(case: Path) -> str:
    argv = [str(MCP_GUARD), "check", "--config", "guard.yaml"] if (case / "guard.yaml").exists() else [str(MCP_GUARD), "check", "."]
    # a fixed PATH: whether a bare upstream command is found is part of the output
    env = {**os.environ, "PATH": os.pathsep.join([str(TOOLS_BIN), str(VENV_BIN), "/usr/bin", "/bin"])}
    proc = subprocess.run(argv, cwd=case, capture_output=True, text=True, timeout=60, check=False, env=env)
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
def test_check_output_is_golden(case: str) -> None:
    got = run_check(GOLDEN / case)
    expected = GOLDEN / case / "expected.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(got, encoding="utf-8")
    assert "Traceback" not in got
    assert got == expected.read_text(encoding="utf-8")
