"""A request waiting in the approval queue: telling its host at once that a person must decide,
and the audit record of a request nobody waits for any more (``abandoned``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mcp_guard.decision import Outcome, Verdict
from mcp_guard.jsonrpc import META_LOG_LEVEL, RELATED_REQUEST, Era, Message
from mcp_guard.proxy.pipeline import NAME_FIELD
from mcp_guard.proxy.routing import LOG_LEVELS
from mcp_guard.request import RequestContext
from mcp_guard.state import ABANDONED

if TYPE_CHECKING:
    from mcp_guard.request import Target

log = logging.getLogger("mcp_guard.approvals")

ABANDONED_WHY = "nobody waits for the answer any more: the call was cancelled or its guard shut down"


async def tell_waiting(req: RequestContext, entry: Target, approval_id: str, wait_limit: float) -> None:
    """A host that declared no elicitation is told at once that a person must decide, and
    where: a warning log message (and a progress note when it asked for progress) about the request,
    so a transport with a stream per request sends it on that request's stream."""
    if req.tell_host is None or "elicitation" in req.capabilities:
        return  # a host with elicitation may show the question itself (the page, when it is configured)
    text = (f"A person must approve {entry.qualified} before it runs: it waits up to {wait_limit:g}s as approval "
            f"request {approval_id} in the guard's approval queue, answered with `mcp-guard approvals approve "
            f"{approval_id}` (or `reject {approval_id}`) by whoever operates this guard.")
    meta = req.params.get("_meta")
    related = RELATED_REQUEST.set(req.message.get("id"))
    try:
        if _wants_warning(req.era, meta):
            await req.tell_host({"jsonrpc": "2.0", "method": "notifications/message",
                                 "params": {"level": "warning", "logger": "mcp-guard", "data": text}})
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if isinstance(token, str | int) and not isinstance(token, bool):
            await req.tell_host({"jsonrpc": "2.0", "method": "notifications/progress",
                                 "params": {"progressToken": token, "progress": 0, "message": text}})
    except Exception as exc:  # telling is a courtesy: the wait goes on regardless
        log.debug("could not tell the host about approval %s: %s", approval_id, exc)
    finally:
        RELATED_REQUEST.reset(related)


def _wants_warning(era: Era | None, meta: object) -> bool:
    """A 2026-07-28 request gets log messages only when it opted in (``_meta`` logLevel at or below
    ``warning``); a handshake-era session gets them unless it asked for fewer (``logging/setLevel``)."""
    if era != Era.MODERN:
        return True
    level = meta.get(META_LOG_LEVEL) if isinstance(meta, dict) else None
    return isinstance(level, str) and level in LOG_LEVELS and LOG_LEVELS.index(level) <= LOG_LEVELS.index("warning")


def abandoned_record(req: RequestContext, entry: Target, digest: str, verdict: Verdict, approval_id: str,
                     wait: float) -> Message:
    """The audit record of a queued request withdrawn because nobody waits for it: a rejection
    whose approval answer is ``abandoned`` (shaped as the pipeline's decision records)."""
    who = req.principal
    return {
        "principal": list(who.chain), "user": who.user, "agent": who.agent, "verified": who.verified,
        "purpose": who.purpose, "grant_id": who.grant_id, "session": req.session_key or req.session_id, "method": req.method,
        "kind": str(entry.kind), "upstream": entry.upstream, NAME_FIELD[entry.kind]: entry.name, "exposed": entry.exposed,
        "decision": str(Outcome.REJECTED), "policy_ids": list(verdict.policy_ids), "rule_ids": list(verdict.rule_ids),
        "reason": f"mcp-guard withdrew approval request {approval_id}: {ABANDONED_WHY}", "approver": None,
        "args_sha256": digest,
        "approval": {"channel": "queue", "answer": ABANDONED, "wait_s": round(wait, 3), "id": approval_id},
    }


__all__ = ["ABANDONED_WHY", "abandoned_record", "tell_waiting"]
