"""What an approver reads cannot hide anything: every invisible, format, control and blank-rendering
code point is spelled ``⟨U+XXXX⟩``, the same on the approval page and in ``mcp-guard approvals list``."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from fixtures import mcp_guard_bin, tools_env
from hypothesis import given
from hypothesis import strategies as st

from mcp_guard.invisible import DEFAULT_IGNORABLE, default_ignorable, invisible, marked
from mcp_guard.serve.approval_page import visible
from mcp_guard.state import open_store

# named by hand, not derived from the module's table: what renders as nothing or as a blank
BLANK_RENDERING = (0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x00AD, 0x180E, 0x200B, 0x2060, 0xFEFF, 0xFE0F,
                   0xE0001, 0xE0041, 0xE0100, 0x1D173, 0x1BCA0, 0x17B4)
CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
CODE = re.compile("\u27e8U\\+([0-9A-F]{4,6})\u27e9")


def _unmark(text: str) -> str:
    return CODE.sub(lambda m: chr(int(m.group(1), 16)), text)


def test_every_code_point_of_the_named_sets_is_invisible() -> None:
    missed = [f"U+{cp:04X}" for cp in range(sys.maxunicode + 1)
              if (unicodedata.category(chr(cp)) in CATEGORIES or default_ignorable(cp)) and not invisible(chr(cp))]
    assert missed == []
    assert [f"U+{cp:04X}" for cp in BLANK_RENDERING if not invisible(chr(cp))] == []
    assert all(default_ignorable(cp) for cp in (0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x202E, 0xE0FFF))
    assert not any(default_ignorable(cp) for cp in (0x20, 0x41, 0x034E, 0x2800, 0x2070, 0xE1000))


def test_the_default_ignorable_table_is_sorted_and_disjoint() -> None:
    assert all(a <= b for a, b in DEFAULT_IGNORABLE)
    assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(DEFAULT_IGNORABLE))


def test_ordinary_text_is_left_alone() -> None:
    for text in ("write_note", "Grüße, 東京 — ok", "a b", "emoji 🙂", "ﬁ ligature"):
        assert marked(text) == text and visible(text) == text.replace("&", "&amp;")


@given(st.text(alphabet=st.characters(codec=None), max_size=40))
def test_marking_hides_nothing_and_loses_nothing(text: str) -> None:
    shown = marked(text)
    assert not any(invisible(ch) for ch in shown)
    assert _unmark(shown) == text or "\u27e8U+" in text  # injective unless the text spells a code itself
    page = visible(text)
    assert not any(invisible(ch) and ch != "\n" for ch in page)


@pytest.mark.parametrize("cp", [*BLANK_RENDERING, 0x202E, 0x2028, 0x2029, 0x07, 0x1B, 0x85, 0x3000])
def test_page_and_cli_mark_each_the_same(cp: int) -> None:
    ch = chr(cp)
    tag = f"\u27e8U+{cp:04X}\u27e9"
    assert tag in visible(f"a{ch}b") and ch not in visible(f"a{ch}b")
    assert marked(f"a{ch}b") == f"a{tag}b"


def test_approvals_list_prints_no_bidi_override_raw(tmp_path: Path) -> None:
    """The CLI as a separate process over a real sqlite queue: a caller-chosen tool name, purpose and
    argument preview carrying a right-to-left override, a Hangul filler and a Braille blank."""
    url = f"sqlite:///{tmp_path / 'state.db'}"

    async def put() -> None:
        store = open_store(url)
        try:
            await store.approval_create({
                "upstream": "notes", "tool": "write_\u202etxt.exe", "principal": ["user:alice", "agent:planner\u3164"],
                "purpose": "support\u2800", "args_preview": '{"text": "pay\u202e01$"}', "expires_at": 9e9,
            })
        finally:
            await store.close()

    asyncio.run(put())
    out = subprocess.run([str(mcp_guard_bin()), "approvals", "list", "--state", url], env=tools_env(),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "\u202e" not in out and "\u3164" not in out and "\u2800" not in out
    assert "write_\u27e8U+202E\u27e9txt.exe" in out and "agent:planner\u27e8U+3164\u27e9" in out
    assert "support\u27e8U+2800\u27e9" in out and "pay\u27e8U+202E\u27e901$" in out
