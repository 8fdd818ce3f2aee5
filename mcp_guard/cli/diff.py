"""CLI: ``diff`` and ``replay`` — what a policy change does, before it is live (docs/policies.md,
"Changing a policy safely")."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from mcp_guard.audit import iter_records, rotated_set, verify
from mcp_guard.config import GuardConfig, iter_policy_files, load_config, read_sources
from mcp_guard.diffing import (
    EFFECT_OF,
    Change,
    DiffTarget,
    Replayed,
    chain_decided,
    diff,
    literal_targets,
    replay_one,
    subject_principals,
)
from mcp_guard.errors import AuditError, GuardError
from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext
from mcp_guard.policy import PolicySet, load_sources
from mcp_guard.report import record_principal

_NAME_FIELD = {"tool": "tool", "resource": "uri", "prompt": "prompt"}


def load_policies(paths: Iterable[Path], what: str) -> PolicySet:
    """A policy set from files and directories; an invalid one is a ConfigError (file:line lines)."""
    files = [f for p in paths for f in iter_policy_files(p)]
    if not files:
        raise GuardError(f"{what}: no policy files")
    return load_sources(read_sources(files))


def _annotations(config: GuardConfig | None) -> dict[str, Mapping[str, Any]]:
    """``UPSTREAM/TOOL`` -> annotations the guard would trust (pinned, or a trusted upstream)."""
    from mcp_guard.pinning import read_lock

    if config is None or config.lock_file is None:
        return {}
    pins = read_lock(config.lock_file)
    out: dict[str, Mapping[str, Any]] = {}
    for up, named in (pins.definitions.items() if pins else ()):
        cfg = config.upstreams.get(up)
        if config.pinning == "off" and not (cfg is not None and cfg.trust_annotations):
            continue
        for name, d in named.items():
            if isinstance(d.get("annotations"), dict):
                out[f"{up}/{name}"] = d["annotations"]
    return out


def pinned_targets(config: GuardConfig | None) -> list[DiffTarget]:
    """Every tool of guard.lock (with its trusted annotations)."""
    from mcp_guard.pinning import read_lock

    if config is None or config.lock_file is None:
        return []
    pins = read_lock(config.lock_file)
    ann = _annotations(config)
    return [DiffTarget(Kind.TOOL, f"{u}/{t}", ann.get(f"{u}/{t}")) for u, tools in (pins.pins.items() if pins else ()) for t in tools]


def audited_target(record: Mapping[str, Any], annotations: Mapping[str, Mapping[str, Any]]) -> DiffTarget | None:
    """What an audit record decided on, or None (an unknown name, a method with no target)."""
    kind, upstream = record.get("kind"), record.get("upstream")
    if kind not in _NAME_FIELD or not isinstance(upstream, str) or record.get("decision") == "unknown":
        return None
    name = record.get(_NAME_FIELD[kind])
    if not isinstance(name, str):
        return None
    full = f"{upstream}/{name}"
    return DiffTarget(Kind(kind), full, annotations.get(full) if kind == "tool" else None)


def _read_audit(path: str, allow_broken: bool) -> list[dict[str, Any]]:
    if not any(Path(f).exists() for f in rotated_set(path)):
        raise AuditError(f"cannot read the audit log {path}: no such file")
    result = verify(path)
    if not result.ok:
        where = f"{result.file}:{result.first_bad_line}" if result.first_bad_line else result.file
        click.echo(f"WARNING: the audit chain is BROKEN at {where}: {result.reason}", err=True)
        if not allow_broken:
            raise AuditError("refusing to use a log that does not verify (records may be edited or missing); "
                             "run `mcp-guard audit verify` to see why, or pass --allow-broken")
    return list(iter_records(path))


def _paths_of(config: GuardConfig | None) -> Any:
    def paths(upstream: str) -> PathContext | None:
        cfg = config.upstreams.get(upstream) if config is not None else None
        return cfg.paths if cfg is not None else None
    return paths


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """Caller-controlled text (agent names, tool names from the audit log) on one honest line:
    control, line-breaking and bidi characters escaped, so no name can forge a line of output."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _who(p: Principal) -> str:
    return shown(" ".join(p.chain) + (f" (purpose {p.purpose})" if p.purpose else ""))


# --------------------------------------------------------------------------- diff


@click.command("diff")
@click.argument("old", type=click.Path(exists=True, path_type=Path))
@click.argument("new", type=click.Path(exists=True, path_type=Path))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="guard.yaml: its guard.lock names every pinned tool, its upstreams' workdir judge paths, "
                   "its audit log names the principals.")
@click.option("--audit", "audit_path", type=click.Path(dir_okay=False), help="An audit log whose principals and targets to include.")
@click.option("--allow-widening", is_flag=True, help="Exit 0 even when the change widens what someone may do.")
@click.option("--allow-broken", is_flag=True, help="Use an audit log whose hash chain does not verify.")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON (for CI).")
def diff_cmd(old: Path, new: Path, config_path: Path | None, audit_path: str | None, allow_widening: bool,
             allow_broken: bool, as_json: bool) -> None:
    """Compare two policy versions (files or directories): every principal x every tool, resource
    and prompt, decided under OLD and NEW; print only what widens, narrows or becomes conditional.

    Principals: one per combination of each policy's subjects, someone no subjects list names,
    and everyone in the audit log.  Targets: every tool of guard.lock, every name a rule writes
    literally, and everything in the audit log.  Exit 1 when something widens (a CI gate),
    unless --allow-widening.
    """
    config = load_config(config_path) if config_path else None
    before, after = load_policies([old], str(old)), load_policies([new], str(new))
    principals = subject_principals([before, after])
    targets: dict[tuple[Kind, str], DiffTarget] = {(t.kind, t.name): t for t in [*pinned_targets(config),
                                                                             *literal_targets([before, after])]}
    path = audit_path or (config.audit.path if config is not None and config.audit.path not in (None, "-") else None)
    if path and (audit_path or any(Path(f).exists() for f in rotated_set(path))):
        ann = _annotations(config)
        seen = {(p.user, p.agents, p.purpose) for p in principals}
        for record in _read_audit(path, allow_broken):
            who = record_principal(record)
            if who is not None and (who.user, who.agents, who.purpose) not in seen:
                seen.add((who.user, who.agents, who.purpose))
                principals.append(Principal(user=who.user, agents=who.agents, purpose=who.purpose))
            t = audited_target(record, ann)
            if t is not None:
                targets.setdefault((t.kind, t.name), t)
    ordered = sorted(targets.values(), key=lambda t: (t.kind, t.name))
    changes = diff(before, after, principals, ordered, _paths_of(config))
    widened = [c for c in changes if c.widening]
    counts = Counter(c.change for c in changes)
    if as_json:
        click.echo(json.dumps({"old": str(old), "new": str(new), "principals": len(principals), "targets": len(ordered),
                               "counts": dict(counts), "widening": len(widened),
                               "changes": [c.to_json() for c in changes]}, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(render_diff(changes, old, new, len(principals), len(ordered))))
    if widened and not allow_widening:
        click.echo(f"mcp-guard: {len(widened)} widening change{'s' if len(widened) != 1 else ''}: "
                   "review them, then pass --allow-widening to accept", err=True)
        sys.exit(1)


def render_diff(changes: list[Change], old: Path, new: Path, principals: int, targets: int) -> list[str]:
    out = [f"mcp-guard diff {old} -> {new}: {principals} principals x {targets} tools, resources and prompts"]
    if not changes:
        out.append("no change: every principal may do exactly what it could before")
        return out
    width = max(len(c.change) for c in changes)
    for c in sorted(changes, key=lambda c: (not c.widening, c.change, c.target.kind, c.target.name, c.principal.chain)):
        rules = ", ".join(c.new.rules or c.old.rules)
        out.append(f"{c.change:<{width}}  {shown(c.target.label)}  {_who(c.principal)}: {shown(str(c.old))} -> {shown(str(c.new))}"
                   + (f"  [{rules}]" if rules else ""))
    counts = Counter(c.change for c in changes)
    out.append(f"{len(changes)} changes: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return out


# --------------------------------------------------------------------------- replay


@click.command("replay")
@click.option("--audit", "audit_path", required=True, type=click.Path(dir_okay=False), help="The audit log to replay.")
@click.option("--policies", "policy_paths", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
              help="The new policy file or directory (repeatable).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="guard.yaml: its upstreams' workdir judge relative paths, its guard.lock gives annotations.")
@click.option("--allow-broken", is_flag=True, help="Replay a log whose hash chain does not verify.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def replay(audit_path: str, policy_paths: tuple[Path, ...], config_path: Path | None, allow_broken: bool, as_json: bool) -> None:
    """Re-decide every audited request under new policies; list those whose decision changes.

    A request whose arguments the audit did not keep (audit.include_args is off) is re-decided
    only when its arguments cannot matter; otherwise it is listed as depending on arguments.
    The policies alone are re-decided: a refusal that came from a grant chain is skipped.  Give
    --config so rules that select tools by annotations see the pinned ones, as the guard does.
    """
    config = load_config(config_path) if config_path else None
    policies = load_policies(policy_paths, "--policies")
    records = _read_audit(audit_path, allow_broken)
    ann = _annotations(config)
    paths = _paths_of(config)
    now = time.time()
    changed: list[Replayed] = []
    skipped: Counter[str] = Counter()
    replayed = 0
    for line, record in enumerate(records, 1):
        target = audited_target(record, ann)
        who = record_principal(record)
        decision = str(record.get("decision"))
        if target is None or who is None:
            skipped["no tool, resource or prompt (unknown names, other methods)"] += 1
            continue
        if decision not in EFFECT_OF:
            skipped[f"decision {decision} (not the policies')"] += 1
            continue
        if record.get("method") == "completion/complete" and target.kind is Kind.RESOURCE:
            skipped["completions of resource templates (decided by the listing)"] += 1
            continue
        if chain_decided(record):
            skipped["decided by a grant chain"] += 1
            continue
        args = record.get("args")
        replayed += 1
        got = replay_one(policies, line, str(record.get("time") or "?"), who, target, decision,
                         args if isinstance(args, dict) else None, paths(target.name.partition("/")[0]), now)
        if got is not None:
            changed.append(got)
    if as_json:
        click.echo(json.dumps({"audit": audit_path, "records": len(records), "replayed": replayed,
                               "changed": [r.to_json() for r in changed], "skipped": dict(skipped)},
                              indent=2, ensure_ascii=False))
        return
    depends = sum(1 for r in changed if r.new is None)
    click.echo(f"mcp-guard replay of {audit_path} under {', '.join(map(str, policy_paths))}: {replayed} requests re-decided, "
               f"{len(changed) - depends} change, {depends} depend on arguments the audit did not keep")
    for r in changed:
        head = f"line {r.line} {shown(r.time)}  {shown(r.target.label)}  {_who(r.principal)}: {shown(r.recorded)} -> "
        if r.new is None:
            click.echo(head + f"depends on arguments, {shown(str(r.standing))}")
        else:
            click.echo(head + f"{r.new} ({r.status})")
    for why, n in sorted(skipped.items()):
        click.echo(f"skipped {n}: {why}")
    if depends:
        click.echo("to re-decide the requests that depend on arguments, set audit.include_args: true "
                   "(docs/audit.md says what that costs) and replay a log written with it")


COMMANDS: list[click.Command] = [diff_cmd, replay]
