"""``serve``: pointing a caller at the approval page, and picking up the answer given there.

In ``serve`` the caller holds every channel but the queue, so its own answer must never count.  A
caller that declared URL-mode elicitation is pointed at the guard's approval page (a ``-32042``
error with the elicitation for handshake-era callers, a url-mode ``input_required`` for 2026-07-28
callers), where the human signs in at the IdP and answers; the retry then finds that answer in the
state store and goes through once.  The page itself is ``serve/approval_page.py``; this side only
queues the request, points at it and reads the stored answer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mcp_guard.decision import Verdict
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era, Message
from mcp_guard.proxy.approval_answers import answer_wait, answered, rejected
from mcp_guard.proxy.approval_seal import STATE_VERSION, StateSealer, page_binding
from mcp_guard.proxy.approval_text import APPROVAL_KEY, request_record
from mcp_guard.proxy.pipeline import asked
from mcp_guard.state import APPROVED, EXPIRED, PENDING, REJECTED, Counter
from mcp_guard.state.base import APPROVAL_RETENTION

if TYPE_CHECKING:
    from mcp_guard.proxy.context import GuardContext
    from mcp_guard.request import RequestContext, Target

log = logging.getLogger("mcp_guard.approvals")

PAGE_PATH = "/approvals/"  # the approval page of ``serve`` (serve/approval_page.py serves it)
PAGE_BINDING_KEY = "approval-binding:"  # state-store key prefix: a page request's binding -> its newest id


def usable_until(record: Mapping[str, Any], timeout: float) -> float:
    """An answer on the page can be picked up by a retry until one more ``approvals.timeout`` after
    the request would have expired."""
    expires = record.get("expires_at")
    return (float(expires) if isinstance(expires, int | float) else time.time()) + timeout


class PageChannel:
    """The approval page as seen from the call: queue the request once per binding, point the
    caller at it, and release the retry once the human answered there."""

    def __init__(self, ctx: GuardContext, sealer: StateSealer) -> None:
        self.ctx = ctx
        self.sealer = sealer

    @property
    def timeout(self) -> float:
        return self.ctx.config.approvals.timeout

    async def ask(self, req: RequestContext, entry: Target, args: dict[str, Any], digest: str, verdict: Verdict,
                  base: str) -> Verdict:
        """A handshake-era retry finds its earlier request by binding (answered: used once; pending:
        pointed at again); otherwise a new request is queued and the caller pointed at its page."""
        who = req.principal
        binding = page_binding(who, entry.qualified, digest)
        modern = req.era == Era.MODERN
        record = None if modern else await self._earlier(binding)
        if record is not None and record.get("status") != PENDING:
            return answered(verdict, entry, record, "page", answer_wait(record))
        if record is None:
            # only page requests carry a binding: a queued call's approval never releases a retry as well
            record = {**request_record(self.ctx, req, entry, args, digest, verdict), "binding": binding}
            record["id"] = await self.ctx.store.approval_create(record)
            # a handshake-era retry finds it by binding until its answer can no longer be picked up
            await self.ctx.store.value_set(PAGE_BINDING_KEY + binding, str(record["id"]),
                                           usable_until(record, self.timeout))
            log.warning("approval %s: %s for %s waits up to %gs for a human on %s%s%s", record["id"],
                        entry.qualified, " > ".join(who.chain), self.timeout, base, PAGE_PATH, record["id"])
        return self._point(who, entry, verdict, base, str(record["id"]), binding, record.get("expires_at"), modern)

    async def _earlier(self, binding: str) -> dict[str, Any] | None:
        """The newest request with this binding (one keyed lookup, no scan of the queue) if it is
        still pending, or answered and not yet used (the answer is then spent: a second retry makes
        a new request, which the binding then points at)."""
        store = self.ctx.store
        approval_id = await store.value_get(PAGE_BINDING_KEY + binding)
        record = None if approval_id is None else await store.approval_get(approval_id)
        if record is None or record.get("binding") != binding:
            return None
        now = time.time()
        status = record.get("status")
        if status == PENDING:
            return record
        if status in (APPROVED, REJECTED) and now < usable_until(record, self.timeout) and \
                await store.consume([Counter(f"approval-used:{approval_id}", 1, now + APPROVAL_RETENTION)]) is None:
            return record
        return None

    def _point(self, who: Principal, entry: Target, verdict: Verdict, base: str, approval_id: str, binding: str,
               expires_at: Any, modern: bool) -> Verdict:
        url = f"{base}{PAGE_PATH}{approval_id}"
        message = (f"mcp-guard needs a human to approve {entry.qualified} for {' > '.join(who.chain)}. "
                   f"Open {url}, sign in and answer there; then retry the call.")
        elicitation: Message = {"mode": "url", "message": message, "url": url}
        if modern:  # 2026-07-28: no elicitationId; the sealed state names the request
            now = self.ctx.clock()
            state = self.sealer.seal({"v": STATE_VERSION, "k": "page", "n": approval_id, "b": binding, "iat": now,
                                      "exp": usable_until({"expires_at": expires_at}, self.timeout)})
            result: Message = {"resultType": "input_required",
                               "inputRequests": {APPROVAL_KEY: {"method": "elicitation/create", "params": elicitation}},
                               "requestState": state}
            return dataclasses.replace(asked(verdict, result, approval_id), approval_channel="page")
        data = {"elicitations": [{**elicitation, "elicitationId": approval_id}]}
        return dataclasses.replace(verdict, approval_channel="page", approval_answer="asked", approval_id=approval_id,
                                   url_elicitation=data)

    async def redeem(self, who: Principal, entry: Target, digest: str, verdict: Verdict, params: Message,
                     base: str) -> Verdict:
        """A 2026-07-28 retry: its ``inputResponses`` are ignored; only the stored answer counts."""
        state = self.sealer.open(params.get("requestState"))
        binding = page_binding(who, entry.qualified, digest)

        def invalid(why: str, approval_id: str | None = None) -> Verdict:
            log.warning("refused an approval requestState for %s: %s", entry.qualified, why)
            return rejected(verdict, entry, "the approval state is invalid, expired or already used", "invalid_state",
                            "page", 0.0, None, approval_id)

        if state is None or state.get("k") != "page" or not isinstance(state.get("n"), str):
            return invalid("not sealed by this guard, or altered")
        approval_id = str(state["n"])
        exp = state.get("exp")
        if not isinstance(exp, int | float) or self.ctx.clock() >= exp:
            return invalid("expired", approval_id)
        record = await self.ctx.store.approval_get(approval_id)
        if state.get("b") != binding or record is None or record.get("binding") != binding:
            return invalid("bound to a different principal, tool or arguments", approval_id)
        status = record.get("status")
        if status == PENDING:
            return self._point(who, entry, verdict, base, approval_id, binding, record.get("expires_at"), True)
        if status == EXPIRED:
            return rejected(verdict, entry, f"no human answered within {self.timeout:g}s", "timeout", "page",
                            answer_wait(record), None, approval_id)
        used = Counter(f"approval-used:{approval_id}", 1, time.time() + APPROVAL_RETENTION)
        if await self.ctx.store.consume([used]) is not None:
            return invalid("already used", approval_id)
        return answered(verdict, entry, record, "page", answer_wait(record))
