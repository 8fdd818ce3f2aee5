"""Helpers for the approval tests: the policy, the elicitation host, audit and result readers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.client.session import ClientRequestContext

POLICIES: list[dict[str, Any]] = [
    {
        "id": "notes-writes",
        "subjects": {"users": ["*@example.com"]},
        "rules": [
            {"effect": "allow", "tools": ["notes/echo", "notes/read_note"]},
            {"effect": "approve", "tools": ["notes/write_note"]},
        ],
    }
]

IDENTITY = {"user": "alice@example.com", "agent": "support-bot", "purpose": "ticket-triage"}

# the ``guard_yaml`` fixture (conftest.py): ``guard_yaml(timeout="20s", remember="none", state="memory://") -> guard.yaml``
GuardYaml = Callable[..., Path]


@dataclass
class Host:
    """The human at the host: answers every elicitation with ``answer`` and remembers what it saw."""

    answer: types.ElicitResult | types.ErrorData = field(
        default_factory=lambda: types.ElicitResult(action="accept", content={"approve": True})
    )
    seen: list[types.ElicitRequestParams] = field(default_factory=list)

    async def __call__(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        self.seen.append(params)
        return self.answer

    @property
    def messages(self) -> list[str]:
        return [p.message for p in self.seen]


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
