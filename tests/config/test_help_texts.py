"""``--help`` of the first-hour commands is complete and self-contained: it says what the command
does and how, and never sends the reader to a document they may not have."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from mcp_guard.cli import main

OUTSIDE = re.compile(r"spec\b|§|section \d|issue \d|#\d{2,}|research/|\.\./", re.IGNORECASE)


@pytest.mark.parametrize(("command", "must_say"), [
    (["run"], ["--name", "--user", "--agent", "--purpose", "derived from the command", "upstream"]),
    (["init"], ["--from-host-config", "--out", "--rewrite-host-config", "--force", "readOnlyHint", "guard.lock",
                "claude_desktop_config.json", ".vscode/mcp.json"]),
    (["check"], ["trust.issuers", "PATH", "warning"]),
    (["approvals"], ["--config", "does not exist"]),
    (["approvals", "approve"], ["--config", "--state"]),
    (["approvals", "list"], ["--config", "--state"]),
    (["demo"], ["nothing is downloaded"]),
])
def test_help_is_complete_and_self_contained(command: list[str], must_say: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert not OUTSIDE.search(text), OUTSIDE.search(text)
    for word in must_say:
        assert word in text, (command, word)
