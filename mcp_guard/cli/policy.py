"""CLI: ``check``, ``explain`` and ``test`` — the policy author's tools (docs/policies.md).

Problems go to stderr as ``file:line:col: message (hint)`` lines; results go to stdout.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from mcp_guard.config import (
    UPSTREAM_NAME,
    GuardConfig,
    iter_policy_files,
    iter_policy_test_files,
    load_config,
    read_sources,
)
from mcp_guard.decision import Outcome, evaluate, is_visible
from mcp_guard.errors import ConfigError, GuardError
from mcp_guard.flow.view import SessionView
from mcp_guard.identity import Principal
from mcp_guard.policy import Effect, Explanation, Kind, PathContext, PolicySet, load_sources, parse_sources
from mcp_guard.policy.document import LABEL
from mcp_guard.policy.testing import CaseResult, TestFile, parse_test_file, run_case
from mcp_guard.yamlsrc import Problem

EXIT = {Effect.ALLOW: 0, Effect.DENY: 1, Effect.APPROVE: 2}
_EFFECT = collections.defaultdict(lambda: Effect.DENY, {Outcome.ALLOW: Effect.ALLOW, Outcome.APPROVAL_REQUIRED: Effect.APPROVE})


def _show(p: Path) -> str:
    return os.path.relpath(p) if p.is_absolute() else str(p)


def _fail(lines: Sequence[str]) -> NoReturn:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


def _sort_key(line: str) -> tuple[str, int, int]:
    file, _, rest = line.partition(":")
    parts = rest.split(":", 2)
    try:
        return file, int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return file, 0, 0


# --------------------------------------------------------------------------- check


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="guard.yaml to validate, with its policies.")
@click.option("--json", "as_json", is_flag=True, help="Print every problem and the summary as one JSON object (for CI).")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def check(config_path: Path | None, paths: tuple[Path, ...], as_json: bool = False) -> None:
    """Validate guard.yaml and policy files; print every problem; exit 1 on any error.

    Problems print as file:line:col: message (hint).  Besides syntax, types and typos it checks
    that trust.issuers files are Ed25519 public keys (a private key there is an error), that an
    upstream command written as a path exists and is executable (an error), and that a bare
    command is on PATH (a warning only: the host that launches the guard may have another PATH),
    and it runs nothing.  With guard.lock it also warns when a rule confines a path argument of
    some tools while sibling tools of the same upstream that take paths are allowed without such
    a condition.  Without arguments: ./guard.yaml, else ./policies.
    """
    if config_path is None and not paths:
        if Path("guard.yaml").exists():
            config_path = Path("guard.yaml")
        elif Path("policies").is_dir():
            paths = (Path("policies"),)
        else:
            raise GuardError("nothing to check: give --config guard.yaml or a policy file or directory")
    lines: list[str] = []
    errors = 0
    targets: list[Path] = list(paths)
    upstreams: list[str] | None = None
    config: GuardConfig | None = None
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            lines.extend(exc.problems)
            errors += sum(1 for p in exc.problems if ": warning: " not in p)
            more, upstreams = _salvage(config_path)
            targets.extend(more)
        else:
            targets.extend(config.policies)
            upstreams = list(config.upstreams) or None
            lines.extend(config.advisories)
            errors += sum(1 for p in config.advisories if ": warning: " not in p)
    files: list[Path] = []
    tests: list[Path] = []
    for t in targets:
        if not t.exists():
            lines.append(f"{_show(t)}:1:1: no such file or directory")
            errors += 1
            continue
        files.extend(iter_policy_files(t))
        if t.is_dir():
            tests.extend(iter_policy_test_files(t))
    try:
        sources = read_sources(files)
        test_sources = read_sources(tests)
    except ConfigError as exc:
        if as_json:
            _check_json([*lines, *exc.problems], 1 + errors, 0, 0, 0, 0)
        _fail([*lines, *exc.problems])
    parsed = parse_sources(sources, upstreams=upstreams)
    problems = [*parsed.problems, *(p for name, text in test_sources for p in parse_test_file(text, name).problems)]
    if config is not None and not parsed.errors:
        problems.extend(_sibling_problems(config, sources))
    errors += sum(1 for p in problems if p.severity == "error")
    lines.extend(sorted((str(p) for p in problems), key=_sort_key))
    warnings = len(lines) - errors
    rules = sum(len(p.rules) for p in parsed.policies)
    if as_json:
        _check_json(lines, errors, warnings, len(parsed.policies), rules, len(files))
    for line in lines:
        click.echo(line, err=True)
    if errors:
        click.echo(f"mcp-guard: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}", err=True)
        sys.exit(1)
    click.echo(f"ok: {_plural(len(parsed.policies), 'policy', 'policies')}, {_plural(rules, 'rule')} in {_plural(len(files), 'file')}"
               + (f", {_plural(len(tests), 'test file')}" if tests else "") + (f" ({_plural(warnings, 'warning')})" if warnings else ""))


_LINE = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): (?P<warning>warning: )?(?P<message>.*)$")


def _check_json(lines: Sequence[str], errors: int, warnings: int, policies: int, rules: int, files: int) -> NoReturn:
    """``check --json``: every problem as an object, the counts, ``ok``; exit 1 on any error."""
    items = []
    for line in lines:
        m = _LINE.fullmatch(line)
        items.append({"file": m["file"], "line": int(m["line"]), "col": int(m["col"]),
                      "severity": "warning" if m["warning"] else "error", "message": m["message"]} if m
                     else {"file": None, "line": None, "col": None, "severity": "error", "message": line})
    click.echo(json.dumps({"ok": not errors, "errors": errors, "warnings": warnings, "policies": policies, "rules": rules,
                           "files": files, "problems": items}, indent=2, ensure_ascii=False))
    sys.exit(1 if errors else 0)


def _sibling_problems(config: GuardConfig, sources: Sequence[tuple[str, str]]) -> list[Problem]:
    """The sibling-path warnings, from the pinned input schemas (nothing without guard.lock)."""
    from mcp_guard.pinning import read_lock
    from mcp_guard.policy.siblings import sibling_warnings

    if config.lock_file is None:
        return []
    try:
        pins = read_lock(config.lock_file)
    except ConfigError:
        return []  # the guard itself reports a corrupt lock file when it starts
    return sibling_warnings(sources, pins.definitions) if pins is not None else []


def _salvage(config_path: Path) -> tuple[list[Path], list[str] | None]:
    """The policy paths and upstream names of a guard.yaml that failed to load, so ``check``
    still reports the policies' problems in the same run."""
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return [], None
    if not isinstance(data, dict):
        return [], None
    raw = data.get("policies")
    names = [raw] if isinstance(raw, str) else [p for p in raw if isinstance(p, str)] if isinstance(raw, list) else []
    ups = data.get("upstreams")
    paths = [config_path.parent / n for n in names if "${" not in n]
    return [p for p in paths if p.exists()], [str(u) for u in ups] if isinstance(ups, dict) and ups else None


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"


# --------------------------------------------------------------------------- explain


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GuardError(f"{option} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise GuardError(f"{option} must be a JSON object")
    return value


def _load_for(config: GuardConfig | None, policy_paths: tuple[Path, ...]) -> PolicySet:
    paths = [*(config.policies if config else ()), *policy_paths]
    if not paths:
        raise GuardError("no policies to explain against: the configuration names none and no --policies was given")
    files = [f for p in paths for f in iter_policy_files(p)]
    return load_sources(read_sources(files))


def _render(expl: Explanation, tool: str, who: Principal, shown: bool, kind: Kind = Kind.TOOL) -> list[str]:
    d = expl.decision
    yes = {True: "yes", False: "no"}
    out = [
        f"decision: {d.effect}",
        f"reason: {d.reason}",
        f"principal: {' -> '.join(who.chain)}"
        + (f" (purpose {who.purpose})" if who.purpose else "") + ("" if who.verified else ", self-asserted"),
        f"{kind}: {tool} (listed in {kind}s/list: {yes[shown]})",
    ]
    if d.rules or d.cited:
        out.append(f"decided by: {', '.join(d.rule_ids)}" if d.rules else f"nearest rule: {', '.join(d.rule_ids)}")
    for pol in expl.policies:
        subj = "match" if pol.subjects_failing is None else f"do not match ({pol.subjects_failing})"
        out.append("")
        out.append(f"policy {pol.id} ({pol.source}): subjects {subj}")
        for r in pol.rules:
            out.append(f"  rule {r.ref.rule} {r.effect}: {'MATCHED' if r.matched else 'no match'}")
            out.append(f"    {kind}s: {yes[r.tools]}")
            if not r.annotations:
                out.append("    annotations: no")
            for text, ok in r.conditions:
                out.append(f"    {text}: {'cannot be judged' if ok is None else yes[ok]}")
    if not expl.policies:
        out.append("")
        out.append("no policies: everything is denied")
    return out


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="guard.yaml whose policies (and identity defaults) to use.")
@click.option("--policies", "policy_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Policy file or directory (instead of, or on top of, the configuration's).")
@click.option("--tool", help="UPSTREAM/TOOL, e.g. fs/read_text_file.")
@click.option("--resource", help="UPSTREAM/URI, e.g. docs/file:///srv/a.md (a bare URI when the configuration has one upstream).")
@click.option("--prompt", help="UPSTREAM/PROMPT, e.g. git/commit_message.")
@click.option("--args", "args_json", help="The call's (or the prompt's) arguments as a JSON object.")
@click.option("--annotations", "annotations_json", help="The tool's trusted annotations as a JSON object.")
@click.option("--user", help="Origin user (default: the configuration's identity, then $USER).")
@click.option("--agent", help="Acting agent.")
@click.option("--purpose", help="Purpose of the session.")
@click.option("--grant", help="A grant chain token (or @file); it decides the identity and must permit the call too.")
@click.option("--session-labels", "session_labels", help="Labels the session holds, comma separated (its content is not known "
              "offline, so `carries` on a held label cannot be judged: a deny or approve matches, an allow does not).")
def explain(config_path: Path | None, policy_paths: tuple[Path, ...], tool: str | None, resource: str | None, prompt: str | None,
            args_json: str | None, annotations_json: str | None, user: str | None, agent: str | None, purpose: str | None,
            grant: str | None, session_labels: str | None) -> None:
    """Show the decision for one request and every rule considered; exit 0 allow, 1 deny, 2 approve.

    Offline: no upstream is started; the tool, resource or prompt is named, not discovered.
    Relative paths are judged against the upstream's `workdir` (and `resolve`) as the guard would.
    """
    config = load_config(config_path) if config_path else None
    if config is None and not policy_paths:
        raise GuardError("give --config guard.yaml (or --policies PATH)")
    given = [(k, v) for k, v in ((Kind.TOOL, tool), (Kind.RESOURCE, resource), (Kind.PROMPT, prompt)) if v is not None]
    if len(given) != 1:
        raise GuardError("give exactly one of --tool, --resource or --prompt")
    kind, name = given[0]
    name = _target(kind, name, config)
    args = _json_object(args_json, "--args") or {}
    annotations = _json_object(annotations_json, "--annotations")
    policies = _load_for(config, policy_paths)
    chain = None
    if grant:
        chain = _verify_grant(grant, config)
        who = chain.principal
    else:
        ident = config.identity if config else None
        u = user or (ident.user if ident else None) or os.environ.get("USER") or os.environ.get("LOGNAME") or ""
        a = agent if agent is not None else (ident.agent if ident else None)
        p = purpose if purpose is not None else (ident.purpose if ident else None)
        who = Principal(user=u, agents=(a,) if a else (), purpose=p)
    upstream = name.partition("/")[0]
    label = name if kind is Kind.TOOL else f"{kind} {name}"
    if config is not None and config.upstreams and upstream not in config.upstreams:
        click.echo(f"decision: deny\nreason: mcp-guard denied {label}: no upstream named `{upstream}` is configured")
        sys.exit(1)
    paths: PathContext | None = config.upstreams[upstream].paths if config is not None and upstream in config.upstreams else None
    now = time.time()
    held = frozenset(x.strip() for x in (session_labels or "").split(",") if x.strip()) | (chain.flow.labels if chain else frozenset())
    bad = sorted(x for x in held if not LABEL.fullmatch(x))
    if bad:
        raise GuardError(f"--session-labels: `{bad[0]}` is not a label (lower-case letters, digits, _ and -)")
    flow = SessionView(held) if held else None
    expl = policies.explain(who, name, args, annotations, kind=kind, paths=paths, flow=flow)
    listed = is_visible(policies, chain, who, name, annotations, kind)
    lines = _render(expl, name, who, listed, kind)
    # the decision is the proxy's own evaluator; what follows only shows how each part saw it
    effect = _EFFECT[evaluate(policies, chain, who, name, args, annotations, now, kind=kind, paths=paths, flow=flow).decision]
    if chain is not None:
        late = chain.check_time(now)
        check_ = chain.check_call(name, args, kind, paths=paths)
        lines.append("")
        lines.append(f"grant chain {' -> '.join(chain.principal.chain)} (links {', '.join(chain.link_ids)}):")
        lines.extend(f"  {line}" for line in chain.explain_call(name, args, kind, paths=paths))  # every link, no short-circuit
        grant_reason = None
        if late is not None:
            lines.append(f"  chain: {late}")
            grant_reason = str(late)
        elif not check_.allowed:
            lines.append(f"  chain refuses: {check_.reason}")
            grant_reason = check_.reason
        else:
            lines.append("  chain permits the call" + (" with a human's approval" if check_.approval_required else ""))
        if effect is not expl.decision.effect:
            lines[0] = f"decision: {effect} (policies alone: {expl.decision.effect})"
            if grant_reason is not None and len(lines) > 1 and lines[1].startswith("reason:"):
                lines[1] = f"reason: mcp-guard denied {label}: {grant_reason}"
    if policies.shadow is not None:  # never enforced: shown, not part of the exit code
        shadow = evaluate(policies.shadow, chain, who, name, args, annotations, now, kind=kind, paths=paths)
        lines.append("")
        lines.append(f"shadow decision (with the `mode: shadow` policies enforced too): {shadow.decision}"
                     + (f" by {', '.join(shadow.rule_ids)}" if shadow.rule_ids else ""))
    click.echo("\n".join(lines))
    sys.exit(EXIT[effect])


def _target(kind: Kind, name: str, config: GuardConfig | None) -> str:
    """``UPSTREAM/NAME`` from the option; a bare resource URI (``file:///a``, no upstream in front)
    takes the configuration's only upstream, and is an error when there is not exactly one."""
    head, sep, rest = name.partition("/")
    if sep and rest and UPSTREAM_NAME.fullmatch(head):
        return name  # an unconfigured upstream is refused below, as for tools
    if kind is not Kind.RESOURCE:
        raise GuardError(f"--{kind} must be UPSTREAM/{kind.upper()}, not `{name}`")
    ups = list(config.upstreams) if config is not None else []
    if len(ups) == 1:
        return f"{ups[0]}/{name}"
    where = f"the configuration has {len(ups)} upstreams ({', '.join(ups)})" if ups else "no configuration names its upstream"
    raise GuardError(f"--resource `{name}` names no upstream and {where}: write UPSTREAM/URI")


def _verify_grant(token: str, config: GuardConfig | None) -> Any:
    from mcp_guard.app import chain_verifier
    from mcp_guard.config import read_token

    text = read_token(token)
    if config is None or not config.trust.issuers:
        raise GuardError("--grant needs --config with trust.issuers to verify the chain")
    return chain_verifier(config).verify(text, time.time())


# --------------------------------------------------------------------------- test


@click.command("test")
@click.option("--json", "as_json", is_flag=True, help="Print every case's result as one JSON object (for CI).")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def test_cmd(paths: tuple[Path, ...], as_json: bool = False) -> None:
    """Run policy test cases (*.test.yaml); print pass/fail per case; exit 1 on any failure."""
    targets = list(paths) or [Path("policies")]
    files: list[Path] = []
    for t in targets:
        if not t.exists():
            raise GuardError(f"{_show(t)} does not exist")
        found = list(iter_policy_test_files(t))
        if not found:
            raise GuardError(f"no *.test.yaml files under {_show(t)}")
        files.extend(found)
    sets: dict[tuple[Path, ...], PolicySet | list[str]] = {}
    passed = failed = 0
    results: list[dict[str, Any]] = []
    problems: list[str] = []

    def say(line: str, *, err: bool = False) -> None:
        if not as_json:
            click.echo(line, err=err)

    for f, (name, text) in zip(files, read_sources(files), strict=True):
        tf = parse_test_file(text, name)
        if tf.problems:
            for p in tf.problems:
                problems.append(str(p))
                say(str(p), err=True)
            failed += max(1, len(tf.cases))
            continue
        ps = _policies_for(f, tf, sets)
        if isinstance(ps, list):
            problems.extend(ps)
            say(f"FAIL {name}: its policies do not load", err=True)
            for line in ps:
                say(f"  {line}", err=True)
            failed += len(tf.cases)
            continue
        for case in tf.cases:
            out: CaseResult = run_case(ps, case)
            passed += out.passed
            failed += not out.passed
            results.append({"where": case.where, "name": case.name, "passed": out.passed, "detail": None if out.passed else out.detail})
            say(f"{'PASS' if out.passed else 'FAIL'} {case.where}: {case.name}" + ("" if out.passed else f" — {out.detail}"))
    if as_json:
        click.echo(json.dumps({"passed": passed, "failed": failed, "cases": results, "problems": problems}, indent=2, ensure_ascii=False))
    else:
        click.echo(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def _policies_for(file: Path, tf: TestFile, cache: dict[tuple[Path, ...], PolicySet | list[str]]) -> PolicySet | list[str]:
    """A test file runs against its ``policies:`` paths, else every policy in its directory tree."""
    roots = tuple((file.parent / p).resolve() for p in tf.policies) or (file.parent.resolve(),)
    if roots not in cache:
        try:
            cache[roots] = load_sources(read_sources([f for r in roots for f in iter_policy_files(r)]))
        except ConfigError as exc:
            cache[roots] = list(exc.problems)
    return cache[roots]


COMMANDS: list[click.Command] = [check, explain, test_cmd]
