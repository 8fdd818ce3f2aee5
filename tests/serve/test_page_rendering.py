"""The approval page's pure parts: what the approver reads, and who may answer."""

from __future__ import annotations

from mcp_guard.config import ApprovalPageConfig
from mcp_guard.serve.approval_page import ApprovalPage, page_base, pretty_json, visible
from mcp_guard.state.memory import MemoryStore


def test_invisible_and_reordering_characters_are_shown_and_everything_is_escaped() -> None:
    sneaky = "a\u202eb\u200bc\u2066d\u0085e\u00a0f\u2028g\x7fh\ni<b>&\"'"
    shown = visible(sneaky)
    for code in ("202E", "200B", "2066", "0085", "00A0", "2028", "007F"):
        assert f"\u27e8U+{code}\u27e9" in shown, code
    for raw in ("\u202e", "\u200b", "\u2066", "\u0085", "\u00a0", "\u2028", "\x7f", "<b>"):
        assert raw not in shown
    assert "\n" in shown and "&lt;b&gt;&amp;&quot;&#x27;" in shown
    assert visible("naïve 日本") == "naïve 日本"  # ordinary text stays readable


def test_arguments_are_never_shortened() -> None:
    value = {"b": "x" * 100_000, "a": [1, {"deep": "END"}]}
    text = pretty_json(value)
    assert text.index('"a"') < text.index('"b"') and "x" * 100_000 in text and "END" in text


def _page(approvers: tuple[str, ...] = ()) -> ApprovalPage:
    cfg = ApprovalPageConfig(issuer="https://idp.example.com", client_id="guard-ui", approvers=approvers)
    return ApprovalPage(cfg, MemoryStore(), base="https://guard.example.com")


RECORD = {"user": "alice", "agent": "coder", "agents": ["planner", "coder"], "principal": ["user:alice", "agent:planner", "agent:coder"]}


def test_by_default_only_the_origin_user_answers_and_never_an_agent_of_the_chain() -> None:
    page = _page()
    assert page.may_answer({"user": "alice", "sub": "alice"}, RECORD)
    assert not page.may_answer({"user": "bob", "sub": "bob"}, RECORD)
    listed = _page(("oncall", "planner", "coder"))
    assert listed.may_answer({"user": "oncall", "sub": "oncall"}, RECORD)
    assert not listed.may_answer({"user": "alice", "sub": "alice"}, RECORD)  # the list replaces the default
    for agent in ("planner", "coder"):  # listed, but an agent of this chain: never
        assert not listed.may_answer({"user": agent, "sub": agent}, RECORD)
        assert not listed.may_answer({"user": "oncall", "sub": agent}, RECORD)


def test_the_approver_is_recorded_with_issuer_subject_name_and_email() -> None:
    who = {"user": "alice@example.com", "sub": "u-123", "iss": "https://idp.example.com", "name": "Alice", "email": "alice@example.com"}
    assert ApprovalPage.approver(who) == ("alice@example.com (sub u-123 at https://idp.example.com, Alice, alice@example.com; "
                                          "approval page)")


def test_links_use_the_public_origin() -> None:
    assert page_base("https://guard.example.com/mcp", "0.0.0.0", 8765) == "https://guard.example.com"
    assert page_base(None, "0.0.0.0", 8765) == "http://127.0.0.1:8765"
    assert page_base(None, "::1", 80) == "http://[::1]:80"


def test_answered_and_expired_requests_say_so_and_offer_no_buttons() -> None:
    page = _page()
    who = {"user": "alice", "sub": "alice", "iss": "https://idp.example.com", "csrf": "c" * 43}
    base = {**RECORD, "id": "3fa9c2d1", "tool": "write_note", "qualified": "fs/write_note", "args": {"path": "x"}}
    pending = page._render({**base, "status": "pending"}, who)
    assert pending.count("<form") == 2 and 'name="csrf" value="' + "c" * 43 in pending
    for status, shown in (("approved", "approved"), ("rejected", "rejected"), ("expired", "expired")):
        html = page._render({**base, "status": status, "approver": "bob <b>"}, who)
        assert f'class="status {status}">{shown}' in html and "<form" not in html and "bob &lt;b&gt;" in html
