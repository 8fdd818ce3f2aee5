"""``mcp-guard report`` on an audit log written by a real guard.

Two agent hosts (the ``mcp`` SDK client, identified by their clientInfo names) use a guard in front
of the recording upstream and ``mcp-server-time``; ``mcp-guard pin`` records every tool first so
"never used" covers tools nobody called.  The report is checked as text and JSON, its suggested
narrower policy is checked by ``mcp-guard check`` and by the policy engine, and its HTML page is
opened in a real headless Chromium whose screenshot must show something.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from fixtures import (
    VENV_BIN,
    RecordFile,
    guarded_session,
    mcp_guard_bin,
    recording_server_command,
    stdio_upstream,
    tools_env,
    write_guard_config,
)
from mcp.shared.exceptions import MCPError

from mcp_guard.identity import Principal
from mcp_guard.policy import Effect, load_sources

pytestmark = pytest.mark.e2e

POLICIES: list[dict[str, Any]] = [
    {
        "id": "team",
        "rules": [
            {"effect": "allow", "tools": ["rec/echo", "rec/list_notes"]},
            {"effect": "allow", "tools": ["rec/write_note", "rec/read_note"], "when": {"args.path": {"under": "/notes"}}},
            {"effect": "deny", "tools": ["rec/write_note"], "when": {"args.path": {"under": "/notes/locked"}},
             "reason": "Locked notes are read-only."},
            {"effect": "approve", "tools": ["rec/getenv"]},
            {"effect": "deny", "tools": ["rec/delete_note"], "reason": "Deleting notes is never delegated."},
            {"effect": "allow", "tools": ["time/*"]},
        ],
    }
]


async def _approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"approve": True})


def _mcp_guard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(mcp_guard_bin()), *args], cwd=cwd, env=tools_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture
async def audited(tmp_path: Path, record_file: RecordFile) -> Path:
    """A guard.yaml whose audit log holds two agents' sessions; returns the guard.yaml path."""
    config = write_guard_config(
        tmp_path,
        {"rec": stdio_upstream(recording_server_command(), env=record_file.env()),
         "time": stdio_upstream([str(VENV_BIN / "mcp-server-time")])},
        POLICIES,
        identity={"user": "alice@example.com", "purpose": "triage"},
        audit={"path": "./audit.jsonl", "include_args": True},
    )
    pinned = _mcp_guard("pin", "--config", str(config), cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr
    planner = types.Implementation(name="planner", version="1")
    async with guarded_session(config, client_info=planner, elicitation_callback=_approve) as client:
        for _ in range(2):
            assert not (await client.call_tool("rec_echo", {"text": "hi"})).is_error
        assert not (await client.call_tool("rec_write_note", {"path": "/notes/a.md", "text": "x"})).is_error
        assert not (await client.call_tool("rec_read_note", {"path": "/notes/a.md"})).is_error
        assert (await client.call_tool("rec_read_note", {"path": "/etc/passwd"})).is_error
        assert (await client.call_tool("rec_write_note", {"path": "/notes/locked/b.md", "text": "y"})).is_error
        assert not (await client.call_tool("rec_getenv", {"name": "HOME"})).is_error  # approved by the human
        assert not (await client.call_tool("time_get_current_time", {"timezone": "UTC"})).is_error
        with pytest.raises(MCPError):  # hidden: answered like an unknown tool
            await client.call_tool("rec_delete_note", {"path": "/notes/a.md"})
    coder = types.Implementation(name="coder", version="1")
    async with guarded_session(config, client_info=coder) as client:
        assert not (await client.call_tool("rec_echo", {"text": "hello"})).is_error
        assert not (await client.call_tool("rec_list_notes", {})).is_error
    return config


async def test_report_text_json_and_narrowed_policy(audited: Path, tmp_path: Path) -> None:
    out = _mcp_guard("report", "--config", str(audited), "--audit", str(tmp_path / "audit.jsonl"),
                     "--narrowed", str(tmp_path / "narrowed.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "audit chain: verified" in text
    assert "guard.lock (" in text  # the source of the tool names is named
    planner = text[text.index("user:alice@example.com agent:planner"):text.index("suggested narrower policy:")]
    assert "rec/echo" in planner and "allow 2" in planner
    assert "approved 1" in planner  # rec/getenv went through a human
    assert "mcp-guard denied rec/write_note: Locked notes are read-only" in planner
    never_planner = planner[planner.index("never used"):]
    assert "rec/list_notes" in never_planner and "time/convert_time" in never_planner
    assert "rec/delete_note" not in never_planner and "rec/crash" not in never_planner  # not allowed: not "never used"

    js = json.loads(_mcp_guard("report", "--config", str(audited), "--json", cwd=tmp_path).stdout)
    assert js["chain"]["ok"] is True and js["chain"]["records"] >= 10
    by_agent = {s["agent"]: s for s in js["subjects"]}
    assert set(by_agent) == {"planner", "coder"}
    p, c = by_agent["planner"], by_agent["coder"]
    assert p["used"]["rec/echo"] == {"allow": 2}
    assert p["used"]["rec/getenv"] == {"approved": 1}
    assert set(p["refused"]) == {"rec/read_note", "rec/write_note", "rec_delete_note"}  # hidden: audited as unknown, as sent
    assert p["refused"]["rec_delete_note"]["decisions"] == {"unknown": 1}
    assert p["refused"]["rec/write_note"]["decisions"] == {"deny": 1}
    assert [*p["refused"]["rec/write_note"]["reasons"]] == ["mcp-guard denied rec/write_note: Locked notes are read-only (policy team)"]
    assert set(c["used"]) == {"rec/echo", "rec/list_notes"}
    assert {"rec/read_note", "rec/write_note", "rec/getenv", "time/get_current_time", "time/convert_time"} <= set(c["never_used"])
    assert "rec/echo" not in c["never_used"]
    assert js["narrowed_policy"].startswith("# Suggested by `mcp-guard report`")

    narrowed = tmp_path / "narrowed.yaml"
    check = _mcp_guard("check", str(narrowed), cwd=tmp_path)
    assert check.returncode == 0, check.stderr + check.stdout
    ps = load_sources([(str(narrowed), narrowed.read_text())])
    planner_who = Principal("alice@example.com", ("planner",), "triage")
    coder_who = Principal("alice@example.com", ("coder",), "triage")
    # every call that was allowed is still allowed, with the same arguments; the approval stays one
    calls = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    for rec in calls:
        if rec["decision"] == "unknown":
            continue  # named as the caller sent it; rec/delete_note is checked below
        who = planner_who if rec["agent"] == "planner" else coder_who
        tool = f"{rec['upstream']}/{rec['tool']}"
        decided = ps.decide(who, tool, rec["args"]).effect
        expected = {"allow": Effect.ALLOW, "approved": Effect.APPROVE, "deny": Effect.DENY}[rec["decision"]]
        assert decided is expected, (rec, decided)
    # what was never used is gone; conditions kept; deny rules kept
    assert not ps.visible(planner_who, "rec/list_notes") and not ps.visible(planner_who, "time/convert_time")
    assert not ps.visible(coder_who, "rec/read_note") and not ps.visible(coder_who, "time/get_current_time")
    assert ps.decide(planner_who, "rec/read_note", {"path": "/etc/passwd"}).effect is Effect.DENY
    assert not ps.visible(planner_who, "rec/delete_note")
    assert ps.decide(planner_who, "rec/write_note", {"path": "/notes/locked/c.md", "text": ""}).effect is Effect.DENY
    assert ps.decide(Principal("mallory", ("planner",), "triage"), "rec/echo", {"text": "x"}).effect is Effect.DENY


def screenshot(chromium: str, page: Path, shot: Path) -> Path:
    """Chromium's headless screenshot of ``page`` at 1200x1600 (no sandbox: tests may run as root)."""
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                         capture_output=True, text=True, timeout=120, cwd=shot.parent)
    assert shot.exists(), run.stderr[-2000:]
    return shot


def _png_ink(path: Path) -> tuple[int, int, float]:
    """(width, height, share of non-zero bytes in the filtered scanlines): a blank page is ~0."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, sum(1 for b in raw if b) / len(raw)


async def test_report_html_renders_in_a_real_browser(audited: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: run scripts/setup (it installs Debian's chromium)"
    page = tmp_path / "report.html"
    out = _mcp_guard("report", "--config", str(audited), "--html", str(page), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    assert "<svg" in html and "Calls per tool" in html and "Decisions over time" in html
    assert "Audit chain verified" in html and "Suggested narrower policy" in html
    for external in ("<script", "<link", "src=\"http", "href=\"http", "url(", "@import"):
        assert external not in html, external  # self-contained: nothing to fetch
    shot = screenshot(chromium, page, tmp_path / "report.png")
    width, height, ink = _png_ink(shot)
    assert (width, height) == (1200, 1600)
    assert shot.stat().st_size > 20_000, shot.stat().st_size
    assert ink > 0.01, f"the screenshot looks blank ({ink:.4f} of the bytes are ink)"
