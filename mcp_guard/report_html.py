"""``mcp-guard report --html``: the report as one self-contained page.

No scripts, no fonts, no CDN: inline CSS and SVG charts drawn here, so the page opens offline, can
be mailed or attached to a ticket, and shows the same thing in every browser.  Every value from
the audit log is HTML-escaped (tool names and reasons are caller-controlled text).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_guard.report import REFUSED, USED, Report, SubjectReport
from mcp_guard.report_risk import Headline

if TYPE_CHECKING:
    from mcp_guard.diffing import Change

COLOURS = {"used": "#2e7d32", "asked": "#f9a825", "refused": "#c62828", "other": "#9e9e9e"}
LABELS = {"used": "used (allowed / approved)", "asked": "approval asked", "refused": "refused", "other": "other"}
KINDS = ("used", "asked", "refused", "other")

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c1c1c;margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}.meta{color:#555;margin:0 0 12px}
.banner{padding:10px 14px;border-radius:6px;margin:12px 0;font-weight:600}
.ok{background:#e8f5e9;border:1px solid #a5d6a7;color:#1b5e20}.bad{background:#ffebee;border:2px solid #c62828;color:#b71c1c;font-size:17px}
table{border-collapse:collapse;width:100%;margin:6px 0 14px}th,td{border:1px solid #ddd;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums;width:6em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f7f7f7;border:1px solid #ddd;padding:10px;overflow:auto}
.legend span{display:inline-block;margin-right:16px}.legend i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px}
.never{color:#6a1b9a}.muted{color:#777}
"""


def _legend() -> str:
    items = "".join(f'<span><i style="background:{COLOURS[k]}"></i>{escape(LABELS[k])}</span>' for k in KINDS)
    return f'<p class="legend">{items}</p>'


def tool_chart(per_tool: dict[str, Counter[str]], width: int = 1000) -> str:
    """Horizontal stacked bars: one row per tool, segments per outcome."""
    if not per_tool:
        return '<p class="muted">No calls in this window.</p>'
    label_w, row_h, gap = 280, 22, 6
    peak = max(sum(c.values()) for c in per_tool.values()) or 1
    bar_w = width - label_w - 60
    height = len(per_tool) * (row_h + gap) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="calls per tool" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for i, (tool, counts) in enumerate(per_tool.items()):
        y = 5 + i * (row_h + gap)
        parts.append(f'<text x="{label_w - 8}" y="{y + row_h - 6}" text-anchor="end" font-size="13" font-family="monospace">{escape(tool)}</text>')
        x = float(label_w)
        for kind in KINDS:
            n = counts.get(kind, 0)
            if not n:
                continue
            w = bar_w * n / peak
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{row_h}" fill="{COLOURS[kind]}"><title>{escape(tool)}: {n} {escape(LABELS[kind])}</title></rect>')
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + row_h - 6}" font-size="13">{sum(counts.values())}</text>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_chart(report: Report, width: int = 1000, height: int = 260) -> str:
    """Stacked columns of outcomes per hour (or day)."""
    points = report.timeline
    if not points:
        return '<p class="muted">No calls in this window.</p>'
    left, bottom, top = 50, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(sum(c.values()) for _, c in points) or 1
    step = plot_w / len(points)
    col_w = max(min(step * 0.8, 60), 2)
    fmt = {"day": "%Y-%m-%d", "hour": "%m-%d %H:00"}.get(report.bucket, "%H:%M")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="decisions over time" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
             f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="12">{peak}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="12">0</text>']
    every = max(1, len(points) // 10)
    for i, (start, counts) in enumerate(points):
        x = left + i * step + (step - col_w) / 2
        y = float(top + plot_h)
        for kind in KINDS:
            n = counts.get(kind, 0)
            if not n:
                continue
            h = plot_h * n / peak
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{col_w:.1f}" height="{h:.1f}" fill="{COLOURS[kind]}"><title>{start.astimezone(UTC).strftime(fmt)}: {n} {escape(LABELS[kind])}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x + col_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11">{start.astimezone(UTC).strftime(fmt)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle" font-size="12">per {report.bucket} (UTC)</text>')
    parts.append("</svg>")
    return "".join(parts)


def _subject(s: SubjectReport, head: Headline | None = None) -> str:
    out = [f"<h3>{escape(s.label)}</h3>",
           *([f'<p class="banner ok">{escape(str(head))}</p>'] if head is not None else []),
           f'<p class="meta">{s.calls()} calls; identity {"verified by a grant chain" if s.verified else "self-asserted"}'
           + (f"; purposes: {escape(', '.join(s.purposes))}" if s.purposes else "")
           + "; chains: " + escape("; ".join(sorted({" > ".join(p.chain) for p in s.principals.values()}))) + "</p>"]
    used = s.used_keys()
    out.append("<table><tr><th>used tool</th><th>allowed</th><th>approved</th></tr>")
    out.extend(f'<tr><td><code>{escape(t)}</code></td><td class="n">{s.tools[t].decisions["allow"]}</td><td class="n">{s.tools[t].decisions["approved"]}</td></tr>' for t in used)
    if not used:
        out.append('<tr><td colspan="3" class="muted">nothing was used</td></tr>')
    out.append("</table>")
    refused = s.refused_tools()
    if refused:
        out.append("<table><tr><th>refused tool</th><th>decisions</th><th>reasons</th></tr>")
        for t in refused:
            u = s.tools[t]
            ds = ", ".join(f"{d} {n}" for d, n in sorted(u.decisions.items()) if d in REFUSED)
            rs = "<br>".join(f"{escape(r)} ({n}×)" for r, n in u.reasons.most_common())
            out.append(f'<tr><td><code>{escape(t)}</code></td><td>{escape(ds)}</td><td>{rs or "—"}</td></tr>')
        out.append("</table>")
    asked = {t: u.decisions["approval_required"] for t, u in sorted(s.tools.items()) if u.decisions["approval_required"]}
    if asked:
        out.append("<p>Approval asked: " + ", ".join(f"<code>{escape(t)}</code> {n}×" for t, n in asked.items()) + "</p>")
    if head is not None and head.unused:
        out.append('<table class="never"><tr><th>allowed but never used (risky first)</th><th>risk</th></tr>')
        out.extend(f'<tr><td><code>{escape(u.tool)}</code></td><td>{escape(", ".join(u.risks) or "read-only")}'
                   + ("" if u.annotated or not u.risks else " (not annotated)") + "</td></tr>" for u in head.unused)
        out.append("</table>")
    elif s.never_used:
        out.append('<p class="never"><b>Allowed but never used</b> (' + str(len(s.never_used)) + "): "
                   + ", ".join(f"<code>{escape(t)}</code>" for t in s.never_used) + "</p>")
    else:
        out.append('<p class="muted">Every tool the policies allow this subject was used.</p>')
    return "".join(out)


def _changes(changes: list[Change], against: Path | None) -> str:
    """The diff view: what the current policies widen, narrow or make conditional against OLD."""
    head = f"<h2>Changes from {escape(str(against))}</h2>"
    if not changes:
        return head + '<p class="muted">No principal may do anything more or less than under that version.</p>'
    rows = "".join(
        f'<tr class="{"bad" if c.widening else ""}"><td>{escape(c.change)}</td><td><code>{escape(c.target.label)}</code></td>'
        f"<td>{escape(' > '.join(c.principal.chain))}</td><td>{escape(str(c.old))}</td><td>{escape(str(c.new))}</td></tr>"
        for c in sorted(changes, key=lambda c: (not c.widening, c.change, c.target.name)))
    return (head + "<p>Every principal the policies name or the log shows, for every tool, resource and prompt; "
            "widenings first.</p><table><tr><th>change</th><th>target</th><th>principal</th><th>before</th><th>now</th></tr>"
            + rows + "</table>")


def render(report: Report, narrowed_yaml: str | None, title: str = "mcp-guard report", *,
           headlines: dict[int, Headline] | None = None, changes: list[Change] | None = None,
           against: Path | None = None) -> str:
    """The whole page; ``headlines`` by ``id`` of each subject; ``changes`` against ``against``."""
    c = report.chain
    if c.ok:
        banner = f'<div class="banner ok">Audit chain verified: {c.records} records intact (head <code>{escape(c.head[:16])}…</code>).</div>'
    else:
        banner = (f'<div class="banner bad">WARNING: the audit chain is BROKEN at {escape(c.where or "?")}: {escape(c.reason or "")}. '
                  "Records may have been edited, removed or inserted; this report cannot be trusted.</div>")
    window = f"{_when(report.first)} – {_when(report.last)}" if report.first else "no records"
    since = f" (since {_when(report.since)})" if report.since else ""
    totals = report.totals()
    used = sum(totals[d] for d in USED)
    refused = sum(totals[d] for d in REFUSED)
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{report.records} decisions, {window}{escape(since)}; {len(report.subjects)} subjects; '
        f"{used} used, {refused} refused. Tool names for “never used”: {escape(report.tool_source)}.</p>",
        banner,
        *(f'<p class="banner bad">{escape(w)}</p>' for w in c.warnings),
        "<h2>Calls per tool</h2>", _legend(), tool_chart(report.per_tool()),
        "<h2>Decisions over time</h2>", _legend(), timeline_chart(report),
        "<h2>Per subject</h2>", *(_subject(s, (headlines or {}).get(id(s))) for s in report.subjects),
    ]
    if changes is not None:
        body.append(_changes(changes, against))
    if narrowed_yaml is not None:
        body += ["<h2>Suggested narrower policy</h2>",
                 "<p>Only the tools each subject used and was allowed to use; conditions, limits and every deny rule kept. "
                 "Review it, then save it under your policies directory and run <code>mcp-guard check</code>.</p>",
                 f"<pre>{escape(narrowed_yaml)}</pre>"]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body>{''.join(body)}</body></html>\n")


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if isinstance(t, datetime) else "?"
