"""Test folders collect together in any combination: helpers live in uniquely named modules
(``approvalkit``, ``grantkit``, ``fixtures``), never in a ``conftest`` another folder shadows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_test_module_imports_a_conftest() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
                 if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(encoding="utf-8"), re.MULTILINE)]
    assert not offenders, f"import from a helper module instead of conftest: {offenders}"


def test_approvals_and_grants_collect_in_one_call() -> None:
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "tests/approvals", "tests/grants"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "tests/approvals/" in run.stdout and "tests/grants/" in run.stdout


def test_test_module_names_are_unique_across_folders() -> None:
    """The test folders have no ``__init__.py``, so two ``test_x.py`` in two folders stop collection
    ("import file mismatch") when they are collected together, as the whole suite does."""
    seen: dict[str, list[str]] = {}
    for p in (ROOT / "tests").rglob("test_*.py"):
        seen.setdefault(p.name, []).append(str(p.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
