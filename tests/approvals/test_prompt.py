"""The approval prompt and the state seal as pure functions; docs/approvals.md shows the real text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.decision import Verdict
from mcp_guard.errors import ConfigError
from mcp_guard.identity import Principal
from mcp_guard.proxy.approval_seal import StateSealer
from mcp_guard.proxy.approval_text import MAX_ARGS_CHARS, render_arguments, render_prompt
from mcp_guard.request import Target

DOC = Path(__file__).resolve().parents[2] / "docs" / "approvals.md"
WHO = Principal(user="alice@example.com", agents=("support-bot", "summarizer"), purpose="ticket-triage",
                verified=True, grant_id="g-7f3a")
ENTRY = Target("fs_write_file", "fs", "write_file", "fs/write_file", {}, None)
ARGS = {"path": "/srv/tickets/42.md", "content": "Hello Bob,\nyour refund of $120 is on its way.\n"}
VERDICT = Verdict("approval_required", "mcp-guard needs a human to approve fs/write_file", ("support-tickets",))


def test_docs_show_exactly_what_the_human_sees() -> None:
    blocks = re.findall(r"```text\n(mcp-guard asks you.*?)\n```", DOC.read_text(encoding="utf-8"), re.S)
    assert blocks == [render_prompt(WHO, ENTRY, ARGS, VERDICT)]


def test_self_asserted_identity_is_labelled() -> None:
    text = render_prompt(Principal(user="bob", agents=("claude-code",)), ENTRY, {}, Verdict("approval_required", "", ()))
    assert "Agent:     claude-code  (self-asserted)" in text
    assert "Purpose:   (none given)" in text
    assert "(no arguments)" in text
    assert "the grant chain requires a human" in text


def test_arguments_are_capped_but_announced() -> None:
    huge = {f"k{i}": "x" * 1000 for i in range(50)}
    lines = render_arguments(huge)
    assert sum(len(line) for line in lines[:-1]) <= MAX_ARGS_CHARS
    assert all(len(line) < 320 for line in lines)
    assert lines[-1].startswith("  … ") and "more argument(s) not shown" in lines[-1]


def test_argument_names_cannot_forge_lines() -> None:
    lines = render_arguments({"x\nApproved: yes": 1})
    assert lines == ['  "x\\nApproved: yes" = 1']


def test_seal_round_trip_and_foreign_keys() -> None:
    sealer = StateSealer()
    token = sealer.seal({"v": 1, "n": "abc"})
    assert sealer.open(token) == {"v": 1, "n": "abc"}
    assert StateSealer().open(token) is None  # another guard's key
    assert sealer.open(token[:-2]) is None
    assert sealer.open("") is None and sealer.open(None) is None and sealer.open("!!!") is None
    assert sealer.open("A" * 10_000) is None


def test_replicas_sharing_a_state_key_open_each_others_request_state(tmp_path: Path) -> None:
    from mcp_guard.config import parse_config
    from mcp_guard.policy import PolicySet
    from mcp_guard.proxy.approvals import make_approver
    from mcp_guard.proxy.context import GuardContext
    from mcp_guard.state.memory import MemoryStore

    def approver(text: str) -> Any:
        cfg = parse_config(text, str(tmp_path / "guard.yaml"), environ={"K": "s" * 40})
        return make_approver(GuardContext(config=cfg, policies=PolicySet.empty(), store=MemoryStore()))

    shared = "version: 1\napprovals:\n  state_key: ${K}\n"
    a, b, lone = approver(shared), approver(shared), approver("version: 1\n")
    sealed = a.sealer.seal({"v": 1, "n": "nonce"})
    assert b.sealer.open(sealed) == {"v": 1, "n": "nonce"}
    assert lone.sealer.open(sealed) is None  # without the key, a random one per guard
    with pytest.raises(ConfigError):
        parse_config("version: 1\napprovals:\n  state_key: short\n", str(tmp_path / "g.yaml"), environ={})
