"""A human's answer turned into a verdict, failing closed.

Only an explicit "accept" with ``approve: true`` (or a stored ``approved`` record) approves;
decline, cancel, ``approve: false``, an error or any shape the guard does not understand rejects.
Every channel (elicitation, ``input_required``, the queue, the ``serve`` page) ends here, so the
approved and rejected verdicts read the same whichever way the human answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mcp_guard.decision import Outcome, Verdict
from mcp_guard.proxy.approval_text import MAX_HUMAN_REASON, clip, human_reason
from mcp_guard.state import APPROVED

if TYPE_CHECKING:
    from mcp_guard.request import Target


def approved(verdict: Verdict, entry: Target, approver: str, channel: str, wait: float,
             approval_id: str | None) -> Verdict:
    return dataclasses.replace(
        verdict,
        decision=Outcome.APPROVED,
        reason=f"mcp-guard forwarded {entry.qualified}: approved by {approver}",
        approver=approver,
        approval_channel=channel,
        approval_answer="approve",
        approval_wait=wait,
        approval_id=approval_id,
    )


def rejected(verdict: Verdict, entry: Target, why: str, answer: str, channel: str, wait: float,
             approver: str | None = None, approval_id: str | None = None) -> Verdict:
    return dataclasses.replace(
        verdict,
        decision=Outcome.REJECTED,
        reason=f"mcp-guard refused {entry.qualified}: {why}",
        approver=approver,
        approval_channel=channel,
        approval_answer=answer,
        approval_wait=wait,
        approval_id=approval_id,
    )


def from_elicit_result(verdict: Verdict, entry: Target, answer: Any, channel: str, wait: float,
                       approver: str, approval_id: str | None) -> Verdict:
    """Only ``accept`` with ``approve: true`` approves; every other shape rejects."""
    action = answer.get("action") if isinstance(answer, dict) else None
    content = answer.get("content") if isinstance(answer, dict) else None
    reason = human_reason(content)
    suffix = f" ({reason})" if reason else ""
    if action == "accept" and isinstance(content, dict) and content.get("approve") is True:
        return approved(verdict, entry, approver, channel, wait, approval_id)
    if action == "accept":
        why, said = f"the human rejected it{suffix}", "reject"
    elif action == "decline":
        why, said = "the human declined to approve it", "decline"
    elif action == "cancel":
        why, said = "the approval request was dismissed without an answer", "cancel"
    else:
        return rejected(verdict, entry, "the approval answer was not understood", "error", channel, wait, None,
                        approval_id)
    return rejected(verdict, entry, why, said, channel, wait, approver, approval_id)


def answered(verdict: Verdict, entry: Target, record: Mapping[str, Any], channel: str, wait: float) -> Verdict:
    """The verdict of a request a human answered (queue, CLI or approval page)."""
    approver = str(record.get("approver") or "unknown")
    approval_id = str(record.get("id"))
    if record.get("status") == APPROVED:
        return approved(verdict, entry, approver, channel, wait, approval_id)
    reason = record.get("reason")
    suffix = f" ({clip(' '.join(str(reason).split()), MAX_HUMAN_REASON)})" if reason else ""
    return rejected(verdict, entry, f"rejected by {approver}{suffix}", "reject", channel, wait, approver, approval_id)


def answer_wait(record: Mapping[str, Any]) -> float:
    """How long the human took, from the stored record (0 when it does not say)."""
    created, resolved = record.get("created"), record.get("resolved")
    if isinstance(created, int | float) and isinstance(resolved, int | float):
        return max(0.0, float(resolved) - float(created))
    return 0.0
