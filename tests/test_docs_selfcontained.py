"""The project's own texts stand alone: no pointers to files outside the repository or to a
tracker's issue numbers, which a reader of a clone or an installed package cannot follow.

Covers the README, docs/, examples/, scripts/ and every module of mcp_guard (comments, docstrings
and ``--help`` texts).  Write the rule itself, or link a docs/ page, instead.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(
    r"spec §|(?<!RFC \d{4} )(?<!RFC \d{3} )§\s?\d|section \d+ of the spec|research/|\.\./shared|\bissues? #?\d+",
    re.IGNORECASE,
)


def texts() -> list[Path]:
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "mcp_guard").rglob("*.py"),
             *(p for p in (ROOT / "examples").rglob("*") if p.is_file()), *(ROOT / "scripts").iterdir()]
    return sorted(p for p in files if p.is_file() and p.suffix not in (".png", ".jpg", ".svg"))


def test_texts_reference_nothing_outside_the_repository() -> None:
    hits = []
    for path in texts():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in FORBIDDEN.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: `{m.group(0)}` in: {line.strip()}")
    assert not hits, "state the rule itself or link a docs/ page instead of:\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_should() -> None:
    for bad in ("see spec §4", "(§3.4)", "section 6 of the spec", "research/standards.md", "../shared/spec.md",
                "issue 6", "(Issue 2)", "issues #12"):
        assert FORBIDDEN.search(bad), bad
    for fine in ("the issuer", "issue_grant(key)", "a grant issued 3 times", "the MCP specification", "RFC 3986 §5.2.4"):
        assert not FORBIDDEN.search(fine), fine
