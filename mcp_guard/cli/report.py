"""CLI: ``mcp-guard report`` — what agents used, what was refused, what they never needed."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from mcp_guard.audit import iter_records, rotated_set, verify
from mcp_guard.cli.diff import load_policies, pinned_targets
from mcp_guard.config import GuardConfig, load_config, parse_duration
from mcp_guard.diffing import Change, DiffTarget, diff, literal_targets, subject_principals
from mcp_guard.errors import AuditError, ConfigError, GuardError
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext
from mcp_guard.policy import PolicySet, dump
from mcp_guard.report import (
    REFUSED,
    USED,
    ChainStatus,
    Report,
    build_report,
    literal_tools,
    narrowed_policies,
    record_tool,
    to_json,
)
from mcp_guard.report_risk import Headline, headline

NARROWED_HEADER = """\
# Suggested by `mcp-guard report`: each subject keeps only the tools it used and was allowed to
# use (argument conditions, annotation selectors and limits unchanged); every deny rule is kept.
# Review it, replace your policies with it, then run `mcp-guard check`.
"""


def _since(text: str | None) -> datetime | None:
    """``7d``, ``12h``, ``30m`` (ago) or an ISO date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds is not None:
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise GuardError(f"--since must be a duration such as 7d or 12h, or a date such as 2026-05-01, not `{text}`") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@click.command("report")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="guard.yaml: its policies decide what each subject could have used; its guard.lock names the tools.")
@click.option("--audit", "audit_path", type=click.Path(dir_okay=False), help="The audit log (default: audit.path of the configuration).")
@click.option("--since", default=None, metavar="WHEN", help="Only records newer than this: 7d, 12h, 30m, or a date such as 2026-05-01.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write one self-contained HTML page here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (and the suggested policy) as JSON instead of text.")
@click.option("--narrowed", "narrowed_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the suggested narrower policy file here.")
@click.option("--allow-broken", is_flag=True, help="Report even when the audit chain does not verify (marked loudly; exit 1).")
@click.option("--against", "against", type=click.Path(exists=True, path_type=Path), metavar="OLD",
              help="Another policy version (file or directory): the HTML report shows what changes from it to the current policies.")
def report(config_path: Path, audit_path: str | None, since: str | None, html_out: Path | None, as_json: bool,
           narrowed_out: Path | None, allow_broken: bool, against: Path | None = None) -> None:
    """Per user and agent: tools used, calls refused (and why), tools allowed but never used,
    and a suggested narrower policy.

    The audit hash chain is verified first; a broken chain refuses the report (exit 1) unless
    --allow-broken is given. Tool names come from guard.lock (every pinned tool), the names the policies
    spell out and the audit log.
    """
    from mcp_guard.pinning import read_lock
    from mcp_guard.proxy.reload import load_policy_set
    from mcp_guard.report_html import render

    config = load_config(config_path)
    path = audit_path or config.audit.path
    if not path or path == "-":
        raise ConfigError(f"{config_path}: no audit log to report on: give --audit FILE (the configuration has no audit.path file)")
    if not any(Path(f).exists() for f in rotated_set(path)):
        raise AuditError(f"cannot read the audit log {path}: no such file")
    result = verify(path)
    where = f"{result.file}:{result.first_bad_line}" if result.first_bad_line else result.file
    chain = ChainStatus(result.ok, result.records, result.head_hash, result.reason, where, result.files, result.warnings)
    if not result.ok:
        click.echo(f"WARNING: the audit chain is BROKEN at {where}: {result.reason}", err=True)
        if not allow_broken:
            click.echo("mcp-guard: refusing to report on a log that does not verify (records may be edited or missing); "
                       "run `mcp-guard audit verify` to see why, or pass --allow-broken", err=True)
            sys.exit(1)
    policies = load_policy_set(config)
    records = list(iter_records(path))
    pins = read_lock(config.lock_file) if config.lock_file is not None else None
    pinned = sorted(f"{u}/{t}" for u, tools in (pins.pins.items() if pins else ()) for t in tools)
    seen = sorted({record_tool(r) for r in records
                   if r.get("upstream") in config.upstreams and r.get("decision") != "unknown" and (r.get("kind") or "tool") == "tool"})
    named = literal_tools(policies.policies, config.upstreams)
    if pins is not None:
        source = (f"guard.lock ({len(pinned)} pinned tools), the policies ({len(named)} tools named) "
                  f"and the audit log ({len(seen)} tools called)")
    else:
        source = (f"the policies ({len(named)} tools named) and the audit log only ({len(seen)} tools called; "
                  f"no {config.lock_file}: run `mcp-guard pin` to include the tools the policies select by pattern)")
    rep = build_report(records, policies, [*pinned, *named, *seen], chain=chain, tool_source=source, since=_since(since))
    ann: dict[str, Any] = {f"{u}/{t}": (d.get("annotations") if isinstance(d.get("annotations"), dict) else None)
           for u, defs in (pins.definitions.items() if pins else ()) for t, d in defs.items()}
    heads = {id(s): headline(s, ann) for s in rep.subjects}
    changes = _changes_from(against, policies, rep, config) if against is not None else None
    narrowed = narrowed_policies(rep, policies.policies)
    narrowed_yaml = NARROWED_HEADER + dump(narrowed) if narrowed else None
    if narrowed_out is not None and narrowed_yaml is not None:
        narrowed_out.write_text(narrowed_yaml, encoding="utf-8")
    if html_out is not None:
        html_out.write_text(render(rep, narrowed_yaml, headlines=heads, changes=changes, against=against), encoding="utf-8")
    if as_json:
        data = to_json(rep)
        for entry, s in zip(data["subjects"], rep.subjects, strict=True):
            entry["least_privilege"] = heads[id(s)].to_json()
        if changes is not None:
            data["changes_from"] = {"old": str(against), "changes": [c.to_json() for c in changes]}
        click.echo(json.dumps({**data, "narrowed_policy": narrowed_yaml}, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(render_text(rep, path, narrowed_yaml, heads)))
    if html_out is not None:
        click.echo(f"wrote {html_out}", err=True)
    sys.exit(0 if result.ok else 1)


def _changes_from(against: Path, policies: PolicySet, rep: Report, config: GuardConfig) -> list[Change]:
    """What changes from the OLD policy version to the current one, for every subject seen and
    every subject the policies name, over the report's tools and the policies' literal names."""
    old = load_policies([against], str(against))
    who = {(p.user, p.agents, p.purpose): p for p in subject_principals([old, policies])}
    for s in rep.subjects:
        for p in s.principals.values():
            who.setdefault((p.user, p.agents, p.purpose), p)
    targets = {(t.kind, t.name): t for t in [*pinned_targets(config), *literal_targets([old, policies])]}
    for name in rep.tool_names:
        targets.setdefault((Kind.TOOL, name), DiffTarget(Kind.TOOL, name))

    def paths(upstream: str) -> PathContext | None:
        cfg = config.upstreams.get(upstream)
        return cfg.paths if cfg is not None else None

    return diff(old, policies, list(who.values()), sorted(targets.values(), key=lambda t: (t.kind, t.name)), paths)


def render_text(rep: Report, path: str, narrowed_yaml: str | None, heads: Mapping[int, Headline] | None = None) -> list[str]:
    c = rep.chain
    out = []
    if not c.ok:
        out += ["!" * 78, f"!! WARNING: the audit chain is BROKEN at {c.where}: {c.reason}",
                "!! Records may have been edited, removed or inserted: do not trust this report.", "!" * 78]
    window = f"{_t(rep.first)} to {_t(rep.last)}" if rep.first else "no records"
    out.append(f"mcp-guard report for {path}: {rep.records} decisions, {window}" + (f" (since {_t(rep.since)})" if rep.since else ""))
    if c.ok:
        out.append(f"audit chain: verified, {c.records} records intact, head {c.head}")
    out.extend(f"warning: {w}" for w in c.warnings)
    out.append(f"tool names for \"never used\": {rep.tool_source}")
    for s in rep.subjects:
        out.append("")
        extra = "verified grant chain" if s.verified else "self-asserted"
        if s.purposes:
            extra += f"; purposes {', '.join(s.purposes)}"
        out.append(f"{s.label} ({extra}): {s.calls()} calls")
        head = heads.get(id(s)) if heads else None
        if head is not None:
            out.append(f"  {head}")
        used = s.used_keys()
        out.append("  used:" if used else "  used: nothing")
        for t in used:
            d = s.tools[t].decisions
            out.append(f"    {t:<36} {s.tools[t].used:>5}  (" + ", ".join(f"{k} {d[k]}" for k in USED if d[k]) + ")")
        refused = s.refused_tools()
        if refused:
            out.append("  refused:")
            for t in refused:
                u = s.tools[t]
                out.append(f"    {t:<36} {u.refused:>5}  (" + ", ".join(f"{k} {u.decisions[k]}" for k in REFUSED if u.decisions[k]) + ")")
                out.extend(f"        {n}x {r}" for r, n in u.reasons.most_common())
        asked = [f"{t} {u.decisions['approval_required']}x" for t, u in sorted(s.tools.items()) if u.decisions["approval_required"]]
        if asked:
            out.append("  approval asked: " + ", ".join(asked))
        if head is not None and head.unused:
            out.append("  never used, though the policies allow it (risky first):")
            out.extend(f"    {u.tool:<36} {', '.join(u.risks)}" + ("" if u.annotated or not u.risks else " (not annotated)")
                       for u in head.unused)
        else:
            out.append("  never used, though the policies allow it: " + (", ".join(s.never_used) if s.never_used else "none"))
        reached = s.labels_reached()
        if reached:
            n = len(s.sessions)
            out.append(f"  labels reached ({n} session{'s' if n != 1 else ''}): " + ", ".join(f"{k} in {v}" for k, v in sorted(reached.items())))
        if s.flow_stopped:
            out.append("  stopped by flow rules: " + ", ".join(f"{t} {c}x" for t, c in sorted(s.flow_stopped.items())))
    out.append("")
    if narrowed_yaml is None:
        out.append("no narrower policy to suggest: nothing was used")
    else:
        out.append("suggested narrower policy:")
        out.append(narrowed_yaml.rstrip("\n"))
    return out


def _t(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "?"


COMMANDS: list[click.Command] = [report]
