"""What agents actually did with their authority, read back from the audit log.

``build_report`` folds verified audit records into one entry per subject (origin user and acting
agent): the tools it used (allowed or approved calls), the calls refused and why, and the tools
the policies would have let it use that it never called.  ``narrowed_policies`` turns that into a
least-privilege policy set: every allow/approve rule cut down to the tools the subject really
used (argument conditions, annotations and limits kept), and every deny rule kept as it was.

Pure: records, a compiled ``PolicySet`` and tool names in, plain values out.  The command line
(``mcp-guard report``) reads the files and renders text, JSON or HTML.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mcp_guard.identity import Principal
from mcp_guard.paths import canonical_uri
from mcp_guard.policy import Effect, Policy, PolicySet, Rule, Subjects
from mcp_guard.policy._match import glob_matcher, is_literal, resource_matcher, split_tool

USED = ("allow", "approved")
"""Decisions that forwarded the call to the upstream."""
REFUSED = ("deny", "rejected", "budget_exhausted", "expired", "unknown")
"""Decisions that refused the call (``unknown``: a hidden or unknown tool called by name)."""
ASKED = ("approval_required",)
"""A human was asked; the answer (approved / rejected) is a record of its own."""


def outcome(decision: str) -> str:
    """``used``, ``refused``, ``asked`` or ``other`` for one record's decision."""
    if decision in USED:
        return "used"
    if decision in REFUSED:
        return "refused"
    if decision in ASKED:
        return "asked"
    return "other"


_TARGET = {"tool": "tool", "prompt": "prompt", "resource": "uri"}


def record_target(record: Mapping[str, Any]) -> tuple[str, str]:
    """``(kind, key)`` of a record: ``UPSTREAM/TOOL`` for a tool, ``prompt:UPSTREAM/PROMPT``,
    ``resource:UPSTREAM/URI``, ``method:METHOD`` for a request with no target; for decision
    ``unknown`` the name exactly as the caller sent it (it names nothing the guard knows)."""
    kind = record.get("kind") or ("tool" if "tool" in record else None)
    if kind not in _TARGET:
        return "method", f"method:{record.get('method') or '?'}"
    name = str(record.get(_TARGET[kind]) or record.get("exposed") or "?")
    upstream = record.get("upstream")
    if record.get("decision") != "unknown" and upstream:
        name = f"{upstream}/{name}"
    return kind, name if kind == "tool" else f"{kind}:{name}"


def record_tool(record: Mapping[str, Any]) -> str:
    """``UPSTREAM/TOOL`` of a tool record (see :func:`record_target` for the other kinds)."""
    return record_target(record)[1]


def parse_time(text: Any) -> datetime | None:
    """A record's ``time`` (RFC 3339, ``Z``) as an aware datetime; None when absent or malformed."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the report


@dataclass
class ToolUse:
    """One tool as one subject met it: how many calls ended how, and the refusal reasons."""

    tool: str
    kind: str = "tool"  # tool | prompt | resource | method
    decisions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def used(self) -> int:
        return sum(self.decisions[d] for d in USED)

    @property
    def refused(self) -> int:
        return sum(self.decisions[d] for d in REFUSED)


@dataclass
class SubjectReport:
    """Everything one (origin user, acting agent) pair did; ``principals`` are the variants seen
    (delegation chains, purposes) and decide what the policies would have allowed it."""

    user: str
    agent: str
    principals: dict[tuple[tuple[str, ...], str | None], Principal] = field(default_factory=dict)
    tools: dict[str, ToolUse] = field(default_factory=dict)
    never_used: list[str] = field(default_factory=list)
    verified: bool = False
    sessions: dict[str, set[str]] = field(default_factory=dict)  # session -> labels it reached (information flow)
    flow_stopped: Counter[str] = field(default_factory=Counter)  # target -> calls a label refused or held for a human

    def labels_reached(self) -> Counter[str]:
        """Label -> how many of this subject's sessions reached it."""
        return Counter(label for held in self.sessions.values() for label in held)

    @property
    def label(self) -> str:
        return f"user:{self.user}" + (f" agent:{self.agent}" if self.agent else " (no agent)")

    @property
    def purposes(self) -> list[str]:
        return sorted({p.purpose for p in self.principals.values() if p.purpose})

    def used_tools(self, kind: str = "tool") -> list[str]:
        """Names (``UPSTREAM/NAME``) of the ``kind`` used: forwarded at least once."""
        cut = 0 if kind == "tool" else len(kind) + 1
        return sorted(t[cut:] for t, u in self.tools.items() if u.used and u.kind == kind)

    def used_keys(self) -> list[str]:
        """Every target used, of every kind (``UPSTREAM/TOOL``, ``prompt:…``, ``resource:…``)."""
        return sorted(t for t, u in self.tools.items() if u.used)

    def refused_tools(self) -> list[str]:
        return sorted(t for t, u in self.tools.items() if u.refused)

    def calls(self) -> int:
        return sum(sum(u.decisions.values()) for u in self.tools.values())


@dataclass
class ChainStatus:
    """What ``audit.verify`` said about the log the report was built from."""

    ok: bool
    records: int
    head: str
    reason: str | None = None
    where: str | None = None  # FILE:LINE of the first bad record
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass
class Report:
    chain: ChainStatus
    subjects: list[SubjectReport]
    tool_source: str  # where the tool names for "never used" came from
    tool_names: list[str]
    since: datetime | None
    first: datetime | None
    last: datetime | None
    records: int  # records in the window
    skipped: int  # records outside the window or without a readable time / principal
    timeline: list[tuple[datetime, Counter[str]]]  # bucket start -> outcome counts
    bucket: str  # "minute", "hour" or "day"

    def totals(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for s in self.subjects:
            for u in s.tools.values():
                out.update(u.decisions)
        return out

    def per_tool(self) -> dict[str, Counter[str]]:
        """Target -> outcome counts over every subject (the chart of calls per tool, prompt, resource)."""
        out: dict[str, Counter[str]] = {}
        for s in self.subjects:
            for name, u in s.tools.items():
                c = out.setdefault(name, Counter())
                for d, n in u.decisions.items():
                    c[outcome(d)] += n
        return dict(sorted(out.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))


def _principal(record: Mapping[str, Any]) -> Principal | None:
    user = record.get("user")
    chain = record.get("principal")
    if not isinstance(user, str):
        if isinstance(chain, list) and chain and str(chain[0]).startswith("user:"):
            user = str(chain[0])[5:]
        else:
            return None
    agents: tuple[str, ...] = ()
    if isinstance(chain, list):
        agents = tuple(str(c)[6:] for c in chain[1:] if str(c).startswith("agent:"))
    elif isinstance(record.get("agent"), str) and record["agent"]:
        agents = (str(record["agent"]),)
    purpose = record.get("purpose")
    return Principal(user=user, agents=agents, purpose=purpose if isinstance(purpose, str) else None,
                     verified=record.get("verified") is True)


def literal_tools(policies: Iterable[Policy], upstreams: Iterable[str]) -> list[str]:
    """The tool names the policies spell out (no ``*`` or ``?``) for a configured upstream: known
    tools even when no guard.lock lists them (visibility then decides whether one is allowed)."""
    known = frozenset(upstreams)
    return sorted({name for p in policies for r in p.rules for name in r.tools
                   if is_literal(name) and split_tool(name)[0] in known})


record_principal = _principal  # the principal of an audit record (None when it names none)


def build_report(records: Iterable[Mapping[str, Any]], policies: PolicySet, tools: Sequence[str], *,
                 chain: ChainStatus, tool_source: str, since: datetime | None = None) -> Report:
    """Fold ``records`` (oldest first) into per-subject usage; ``tools`` are the candidate names
    (``UPSTREAM/TOOL``) for "could have used but never did"."""
    subjects: dict[tuple[str, str], SubjectReport] = {}
    times: list[tuple[datetime, str]] = []
    count = skipped = 0
    for record in records:
        when = parse_time(record.get("time"))
        who = _principal(record)
        if who is None or when is None or (since is not None and when < since):
            skipped += 1
            continue
        count += 1
        key = (who.user, who.agent)
        subj = subjects.get(key)
        if subj is None:
            subj = subjects[key] = SubjectReport(who.user, who.agent)
        subj.principals.setdefault((who.chain, who.purpose), who)
        subj.verified = subj.verified or who.verified
        kind, name = record_target(record)
        use = subj.tools.get(name)
        if use is None:
            use = subj.tools[name] = ToolUse(name, kind)
        decision = str(record.get("decision") or "?")
        use.decisions[decision] += 1
        if outcome(decision) == "refused" and record.get("reason"):
            use.reasons[str(record["reason"])] += 1
        if "labels" in record:
            held = subj.sessions.setdefault(str(record.get("session")), set())
            held.update(str(x) for x in [*(record.get("labels") or ()), *(record.get("brings") or ())])
            reason = str(record.get("reason") or "")
            if decision != "allow" and ("; this session holds" in reason or "label ceiling" in reason):
                subj.flow_stopped[name] += 1
        times.append((when, outcome(decision)))
    all_tools = sorted(set(tools))
    for subj in subjects.values():
        used = set(subj.used_tools())
        subj.never_used = [t for t in all_tools if t not in used and any(policies.visible(p, t) for p in subj.principals.values())]
    ordered = sorted(subjects.values(), key=lambda s: (s.user, s.agent))
    timeline, bucket = _timeline(times)
    return Report(
        chain=chain,
        subjects=ordered,
        tool_source=tool_source,
        tool_names=all_tools,
        since=since,
        first=min((t for t, _ in times), default=None),
        last=max((t for t, _ in times), default=None),
        records=count,
        skipped=skipped,
        timeline=timeline,
        bucket=bucket,
    )


_STEPS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def _timeline(times: list[tuple[datetime, str]]) -> tuple[list[tuple[datetime, Counter[str]]], str]:
    """Outcome counts per minute (window under two hours), hour (under three days) or day, with
    the empty buckets in between, so the time axis is linear and quiet periods show as gaps."""
    if not times:
        return [], "hour"
    span = (max(t for t, _ in times) - min(t for t, _ in times)).total_seconds()
    bucket = "minute" if span < 7200 else "hour" if span < 3 * 86400 else "day"
    buckets: dict[datetime, Counter[str]] = {}
    for t, kind in times:
        u = t.astimezone(UTC)
        start = datetime(u.year, u.month, u.day, 0 if bucket == "day" else u.hour, u.minute if bucket == "minute" else 0, tzinfo=UTC)
        buckets.setdefault(start, Counter())[kind] += 1
    at, last = min(buckets), max(buckets)
    while at < last:
        buckets.setdefault(at, Counter())
        at += _STEPS[bucket]
    return sorted(buckets.items()), bucket


# --------------------------------------------------------------------------- the narrower policy


def _matches(subjects: Subjects, who: Principal) -> bool:
    for globs, value in ((subjects.users, who.user), (subjects.agents, who.agent), (subjects.purposes, who.purpose or "")):
        if globs is not None and not glob_matcher(globs)(value):
            return False
    return True


def _canonical_resource(name: str) -> str:
    """``UPSTREAM/URI`` with the URI in the canonical form the engine matches selectors against."""
    upstream, _, uri = name.partition("/")
    return f"{upstream}/{canonical_uri(uri)}"


def _narrowed_id(original: str, n: int, taken: set[str]) -> str:
    """``ORIGINAL.usedN``: unique among the original ids and within the 128 characters an id may have."""
    suffix = f".used{n}"
    pid = original[: 128 - len(suffix)] + suffix
    while pid in taken:
        suffix = "x" + suffix
        pid = original[: 128 - len(suffix)] + suffix
    return pid


def narrowed_policies(report: Report, policies: Sequence[Policy]) -> list[Policy]:
    """A policy set that allows each subject only what it used and was allowed to use.

    For every subject and every original policy that applies to it, each allow/approve rule is
    kept with its ``tools`` cut down to the tools the subject used that the rule names (its
    effect, argument conditions and annotation selectors unchanged, so nothing is widened), under
    ``subjects`` naming that user and agent literally (the policy's own ``purposes`` kept); the
    policy's limits are kept.  Every deny
    rule of every policy is kept as it was, under the original policy's id and subjects (so the
    refusal reasons callers see do not change).
    """
    out: list[Policy] = []
    for n, subj in enumerate(report.subjects, 1):
        used, used_prompts = subj.used_tools(), subj.used_tools("prompt")
        used_resources = [_canonical_resource(r) for r in subj.used_tools("resource")]
        if not (used or used_prompts or used_resources) or any(c in name for name in (subj.user, subj.agent) for c in "*?"):
            continue  # subjects are globs: a name with * or ? cannot be named literally
        for pol in policies:
            if not any(_matches(pol.subjects, p) for p in subj.principals.values()):
                continue
            # the user and agent literally; the policy's own purpose globs (never wider than it was)
            narrowed_subjects = Subjects(users=(subj.user,), agents=(subj.agent,) if subj.agent else pol.subjects.agents,
                                         purposes=pol.subjects.purposes)
            rules: list[Rule] = []
            for rule in pol.rules:
                if rule.effect is Effect.DENY:
                    continue
                tools = tuple(t for t in used if glob_matcher(rule.tools, segment=True)(t))
                prompts = tuple(t for t in used_prompts if glob_matcher(rule.prompts, segment=True)(t))
                # a URI is no glob ("?" is part of it): a rule keeps all its resource selectors or none
                resource = resource_matcher(rule.resources)
                resources = rule.resources if any(resource(r) for r in used_resources) else ()
                if tools or prompts or resources:
                    rules.append(replace(rule, tools=tools, prompts=prompts, resources=resources))
            if rules:
                who = f"user {subj.user}" + (f", agent {subj.agent}" if subj.agent else "")
                out.append(Policy(_narrowed_id(pol.id, n, {p.id for p in policies}), tuple(rules),
                                  f"Narrowed from policy {pol.id} to what {who} used.",
                                  narrowed_subjects, pol.limits))
    for pol in policies:
        denies = tuple(r for r in pol.rules if r.effect is Effect.DENY)
        if denies:
            out.append(Policy(pol.id, denies, f"The deny rules of policy {pol.id}, kept as they were.", pol.subjects))
    return out


# --------------------------------------------------------------------------- JSON


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def to_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON values (``mcp-guard report --json``)."""
    return {
        "chain": {
            "ok": report.chain.ok, "records": report.chain.records, "head": report.chain.head,
            "reason": report.chain.reason, "where": report.chain.where,
            "files": list(report.chain.files), "warnings": list(report.chain.warnings),
        },
        "window": {"since": _iso(report.since), "first": _iso(report.first), "last": _iso(report.last),
                   "records": report.records, "skipped": report.skipped},
        "tool_source": report.tool_source,
        "tools": report.tool_names,
        "totals": dict(sorted(report.totals().items())),
        "subjects": [
            {
                "user": s.user,
                "agent": s.agent,
                "verified": s.verified,
                "purposes": s.purposes,
                "chains": sorted({" > ".join(p.chain) for p in s.principals.values()}),
                "calls": s.calls(),
                "used": {t: dict(sorted((d, n) for d, n in s.tools[t].decisions.items() if d in USED)) for t in s.used_keys()},
                "refused": {
                    t: {"decisions": dict(sorted((d, n) for d, n in s.tools[t].decisions.items() if d in REFUSED)),
                        "reasons": dict(s.tools[t].reasons.most_common())}
                    for t in s.refused_tools()
                },
                "asked": {t: u.decisions["approval_required"] for t, u in sorted(s.tools.items()) if u.decisions["approval_required"]},
                "never_used": s.never_used,
                "labels_reached": dict(sorted(s.labels_reached().items())),
                "flow_stopped": dict(sorted(s.flow_stopped.items())),
            }
            for s in report.subjects
        ],
        "timeline": {"bucket": report.bucket,
                     "points": [{"start": _iso(t), **dict(sorted(c.items()))} for t, c in report.timeline]},
    }
