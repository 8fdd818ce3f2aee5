"""The project's own texts stand alone: no pointers to files outside the repository or to a
tracker's issue numbers, which a reader of a clone or an installed package cannot follow.

Covers the README, docs/, examples/, scripts/, every module of mcp_guard (comments, docstrings
and ``--help`` texts) and the tests (a test's docstring says what it proves, not which ticket asked
for it).  Write the rule itself, or link a docs/ page, instead.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(
    r"spec §|(?<!RFC \d{4} )(?<!RFC \d{3} )§\s?\d|section \d+ of the spec|research/|\.\./shared|\bissues? #?\d+",
    re.IGNORECASE,
)
# tests that hold such strings as data: the patterns themselves and the examples they must catch
NEEDS_THE_STRINGS = frozenset({Path("tests/test_docs_selfcontained.py"), Path("tests/config/test_help_texts.py")})


def texts() -> list[Path]:
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "mcp_guard").rglob("*.py"),
             *(p for p in (ROOT / "examples").rglob("*") if p.is_file()), *(ROOT / "scripts").iterdir(),
             *(p for p in (ROOT / "tests").rglob("*") if p.is_file() and "__pycache__" not in p.parts)]
    return sorted(p for p in files if p.is_file() and p.suffix not in (".png", ".jpg", ".svg", ".pyc")
                  and p.relative_to(ROOT) not in NEEDS_THE_STRINGS)


def test_texts_reference_nothing_outside_the_repository() -> None:
    hits = []
    for path in texts():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in FORBIDDEN.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: `{m.group(0)}` in: {line.strip()}")
    assert not hits, "state the rule itself or link a docs/ page instead of:\n" + "\n".join(hits)


def test_the_tests_are_covered_too() -> None:
    covered = {p.relative_to(ROOT) for p in texts()}
    assert Path("tests/e2e/test_grants_e2e.py") in covered and Path("tests/conftest.py") in covered
    assert not covered & NEEDS_THE_STRINGS


def test_the_pattern_catches_what_it_should() -> None:
    for bad in ("see spec §4", "(§3.4)", "section 6 of the spec", "research/standards.md", "../shared/spec.md",
                "issue 6", "(Issue 2)", "issues #12"):
        assert FORBIDDEN.search(bad), bad
    for fine in ("the issuer", "issue_grant(key)", "a grant issued 3 times", "the MCP specification", "RFC 3986 §5.2.4"):
        assert not FORBIDDEN.search(fine), fine
