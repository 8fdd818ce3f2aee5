"""`report` per subject: which labels its sessions reached, which calls flow rules stopped."""

from __future__ import annotations

from mcp_guard.policy import PolicySet
from mcp_guard.report import ChainStatus, build_report, to_json

T = "2026-12-06T21:00:00Z"
WHO = {"user": "alice@example.com", "principal": ["user:alice@example.com", "agent:bot"], "time": T}


def test_report_shows_labels_reached_and_flow_refusals() -> None:
    records = [
        {**WHO, "session": "s1", "upstream": "web", "tool": "fetch", "decision": "allow", "labels": [], "brings": ["untrusted"]},
        {**WHO, "session": "s1", "upstream": "bank", "tool": "send_money", "decision": "deny", "labels": ["untrusted"],
         "reason": "mcp-guard denied bank/send_money: The payee came from outside (policy p); this session holds `untrusted` since web/fetch"},
        {**WHO, "session": "s2", "upstream": "fs", "tool": "read_text_file", "decision": "allow", "labels": [], "brings": ["private"]},
        {**WHO, "session": "s3", "upstream": "fs", "tool": "read_text_file", "decision": "deny", "labels": [],
         "reason": "mcp-guard denied fs/read_text_file: it would bring `private` into this session, beyond the grant's label ceiling (untrusted)"},
        {**WHO, "session": "s4", "upstream": "time", "tool": "now", "decision": "allow"},  # no flow step: no labels
    ]
    report = build_report(records, PolicySet.empty(), [], chain=ChainStatus(True, len(records), "x"), tool_source="none")
    subject = to_json(report)["subjects"][0]
    assert subject["labels_reached"] == {"private": 1, "untrusted": 1}
    assert subject["flow_stopped"] == {"bank/send_money": 1, "fs/read_text_file": 1}
