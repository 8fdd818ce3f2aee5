"""What the human is shown when a call needs approval, kept apart from how the question travels.

The prompt names who asks, for what, under which rule, and the exact arguments; every argument is
rendered as JSON and capped, so an argument can never forge a line of the prompt or push the part
that matters out of sight.  The stored request record (``mcp-guard approvals list`` and the
``serve`` approval page read it) and the hint for answering from another terminal live here too:
each is text a person reads.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from mcp_guard.audit import args_hash
from mcp_guard.decision import Kind, Verdict
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Message

if TYPE_CHECKING:
    from mcp_guard.config import GuardConfig
    from mcp_guard.proxy.context import GuardContext
    from mcp_guard.request import RequestContext, Target

APPROVAL_KEY = "mcp-guard.approval"
"""The ``inputRequests`` / ``inputResponses`` key of the guard's own approval question."""

MAX_VALUE_CHARS = 300  # one argument value in the prompt
MAX_ARGS_CHARS = 2000  # all arguments in the prompt
MAX_PREVIEW_CHARS = 400  # the one-line preview stored with a queued request
MAX_HUMAN_REASON = 200

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

APPROVAL_SCHEMA: Message = {
    "type": "object",
    "properties": {
        "approve": {
            "type": "boolean",
            "title": "Approve this call?",
            "description": "Yes lets exactly this call through once; no refuses it.",
            "default": False,
        },
        "reason": {
            "type": "string",
            "title": "Reason (optional)",
            "description": "Recorded in the audit log and shown to the agent.",
            "maxLength": 500,
        },
    },
    "required": ["approve"],
}


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(value: Any) -> str:
    """JSON, so quotes, newlines and control characters in an argument stay visibly escaped and an
    argument can never forge a line of the prompt."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return clip(text, MAX_VALUE_CHARS)


def render_arguments(args: Mapping[str, Any]) -> list[str]:
    """One ``name = value`` line per top-level argument, each value and the whole block capped."""
    if not args:
        return ["  (no arguments)"]
    lines: list[str] = []
    used = 0
    for i, (key, value) in enumerate(args.items()):
        name = key if _PLAIN_KEY.fullmatch(key) else _value(key)
        line = f"  {name} = {_value(value)}"
        if used + len(line) > MAX_ARGS_CHARS:
            lines.append(f"  … {len(args) - i} more argument(s) not shown (the approval still binds all of them)")
            break
        lines.append(line)
        used += len(line)
    return lines


def args_preview(args: Mapping[str, Any]) -> str:
    """The compact one-line form kept with a queued request (``mcp-guard approvals list``)."""
    return clip(orjson.dumps(dict(args), default=repr).decode(), MAX_PREVIEW_CHARS)


def _why(verdict: Verdict) -> str:
    # a label behind the question is named with the request that brought it (information flow)
    marker = "; this session holds"
    cause = verdict.reason[verdict.reason.index(marker):] if marker in verdict.reason else ""
    if verdict.policy_ids:
        return "policy " + ", ".join(verdict.policy_ids) + " requires a human for this call" + cause
    return "the grant chain requires a human for this tool" + cause


_WHAT = {
    Kind.TOOL: ("Tool", "tool call"),
    Kind.RESOURCE: ("Resource", "resource request"),
    Kind.PROMPT: ("Prompt", "prompt request"),
}


def render_prompt(who: Principal, entry: Target, args: Mapping[str, Any], verdict: Verdict, *,
                  remember: bool = False) -> str:
    """The text of the approval question: who, what, why, and the exact arguments."""
    if who.verified:
        agent_note = f"verified grant {who.grant_id}" if who.grant_id else "verified grant"
    else:
        agent_note = "self-asserted"
    what = _WHAT[entry.kind]
    lines = [
        f"mcp-guard asks you to approve a {what[1]}.",
        "",
        f"{what[0] + ':':<10} {entry.qualified}  (called as {entry.exposed})",
        f"Upstream:  {entry.upstream}",
        f"User:      {who.user}",
        f"Agent:     {who.agent or '?'}  ({agent_note})",
        f"Chain:     {' > '.join(who.chain)}",
        f"Purpose:   {who.purpose or '(none given)'}",
        f"Why:       {_why(verdict)}",
        f"Arguments (SHA-256 {args_hash(dict(args))[:16]}…):",
        *render_arguments(args),
        "",
        "Approving lets exactly this call through"
        + ("; identical calls in this session pass again" if remember else " once")
        + ", and different arguments ask again.",
    ]
    return "\n".join(lines)


def prompt_for(ctx: GuardContext, who: Principal, entry: Target, args: Mapping[str, Any], verdict: Verdict) -> str:
    """The prompt as this guard's ``approvals.remember`` words it."""
    return render_prompt(who, entry, args, verdict, remember=ctx.config.approvals.remember == "session")


def human_reason(content: Any) -> str | None:
    """The reason a human typed beside the answer, on one line and capped (None when none)."""
    if not isinstance(content, dict):
        return None
    reason = content.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return None
    return clip(" ".join(reason.split()), MAX_HUMAN_REASON)


def answer_options(config: GuardConfig) -> str:
    """The options that make ``mcp-guard approvals approve ID`` reach this guard's queue from any
    directory: the absolute guard.yaml, else the absolute state URL (never a redis password)."""
    if config.source is not None:
        return f" --config {shlex.quote(str(config.source))}"
    url = config.state_url
    if url.startswith("memory://"):
        return " (no other process can: the memory:// state store is private to this guard)"
    if url.startswith(("redis://", "rediss://")) and "@" in url:
        return " --state <this guard's redis URL>"
    return f" --state {shlex.quote(url)}"


def request_record(ctx: GuardContext, req: RequestContext, entry: Target, args: dict[str, Any], digest: str,
                   verdict: Verdict) -> Message:
    """A request as the queue stores it: the CLI shows the preview; with the ``serve`` approval
    page the full arguments are stored too, so the page never clips the part that matters."""
    who = req.principal
    record: Message = {
        "session": req.session_key or req.session_id,
        "principal": list(who.chain),
        "user": who.user,
        "agent": who.agent,
        "agents": list(who.agents),
        "verified": who.verified,
        "purpose": who.purpose,
        "upstream": entry.upstream,
        "tool": entry.name,
        "qualified": entry.qualified,
        "policy_ids": list(verdict.policy_ids),
        "args_sha256": digest,
        "args_preview": args_preview(args),
        "message": prompt_for(ctx, who, entry, args, verdict),
        "expires_at": time.time() + ctx.config.approvals.timeout,
    }
    if ctx.approval_page is not None:
        record["args"] = args
    return record
