"""Human approval for ``effect: approve`` (docs/approvals.md): ask a person, bound to the exact call.

Three channels, picked per call from what the host can do:

- legacy hosts (2025-06-18 / 2025-11-25) that declared form elicitation get an
  ``elicitation/create`` request on the session's back channel;
- 2026-07-28 hosts that declare ``elicitation`` in the request's ``_meta`` get an
  ``InputRequiredResult`` whose ``requestState`` is sealed (``approval_seal``) and bound to
  the principal, the tool, the arguments' SHA-256 and an expiry; redeeming it consumes its nonce in
  the state store, so it answers one call once;
- every other host waits in the approval queue of the state store, answered from another terminal
  with ``mcp-guard approvals approve|reject ID``.

In ``serve`` the caller holds every channel above but the queue, so its own answer never counts:
a caller that declared URL-mode elicitation is pointed at the guard's approval page
(``approval_page_channel``); every other caller waits in the queue.

No answer within ``approvals.timeout`` is a rejection.  Only an explicit "accept" with
``approve: true`` approves; anything else — decline, cancel, ``approve: false``, an error, a
malformed answer, a forged or replayed state — rejects (fail closed, ``approval_answers``).
What the human reads is ``approval_text``.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from mcp_guard.audit import args_hash
from mcp_guard.decision import Outcome, Verdict
from mcp_guard.errors import AuditError, StateError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import META_CLIENT_CAPABILITIES, Era, Message
from mcp_guard.proxy.approval_answers import answered, approved, from_elicit_result, rejected
from mcp_guard.proxy.approval_page_channel import PageChannel
from mcp_guard.proxy.approval_seal import STATE_VERSION, StateSealer, principal_tag, sealer_key
from mcp_guard.proxy.approval_text import (
    APPROVAL_KEY,
    APPROVAL_SCHEMA,
    answer_options,
    prompt_for,
    request_record,
)
from mcp_guard.proxy.pipeline import asked
from mcp_guard.proxy.waiting import ABANDONED_WHY, abandoned_record, tell_waiting
from mcp_guard.request import RequestContext
from mcp_guard.state import Counter
from mcp_guard.state.remembered import RememberedApprovals

if TYPE_CHECKING:
    from mcp_guard.config import ApprovalsConfig
    from mcp_guard.proxy.context import GuardContext
    from mcp_guard.request import Target

log = logging.getLogger("mcp_guard.approvals")

def _form_capable(elicitation: Any) -> bool:
    """``elicitation: {}`` (2025-06-18 style) means form; 2025-11-25+ may list modes explicitly."""
    return isinstance(elicitation, dict) and (not elicitation or "form" in elicitation)


def _url_capable(elicitation: Any) -> bool:
    """URL mode must be declared explicitly (``elicitation: {url: {}}``, 2025-11-25 and later)."""
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def _request_capabilities(params: Message) -> Message:
    meta = params.get("_meta")
    caps = meta.get(META_CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
    return caps if isinstance(caps, dict) else {}


def _host_name(req: RequestContext) -> str:
    return "host:" + str(req.client_info.get("name") or "unknown")


class GuardApprover:
    """The guard's ``Approver``: picks the channel per call and returns ``approved`` or ``rejected``."""

    def __init__(self, ctx: GuardContext, key: bytes | None = None) -> None:
        self.ctx = ctx
        self.sealer = StateSealer(key)
        self.page = PageChannel(ctx, self.sealer)
        # ``remember: session``: in the state store, so every replica sharing it honours them
        self.remembered = RememberedApprovals(ctx.store, ctx.config.serve.session_idle)

    @property
    def config(self) -> ApprovalsConfig:
        return self.ctx.config.approvals

    async def ask(self, req: RequestContext, entry: Target, args: dict[str, Any], verdict: Verdict) -> Verdict:
        who = req.principal
        digest = args_hash(args)
        memo = (principal_tag(who), entry.qualified, digest)
        # a serve session by the name every replica gives it, else this guard's own session (run)
        session = f"serve:{req.session_key}" if req.session_key else f"local:{req.session_id}"
        if self.config.remember == "session":
            earlier = await self._recall(session, memo, entry)
            if earlier is not None:
                return approved(verdict, entry, earlier, "remembered", 0.0, None)
        params = req.params
        page = self.ctx.approval_page
        if self.ctx.approval_queue_only:  # the caller must not approve itself: the page or the queue decide
            caps = _request_capabilities(params) if req.era == Era.MODERN else req.capabilities
            if page is not None and req.era == Era.MODERN and "requestState" in params:
                out = await self.page.redeem(who, entry, digest, verdict, params, page)
            elif page is not None and _url_capable(caps.get("elicitation")):
                out = await self.page.ask(req, entry, args, digest, verdict, page)
            else:
                out = await self._queue(req, entry, args, digest, verdict)
            if out.decision is Outcome.APPROVAL_REQUIRED:
                return out
        elif req.era == Era.MODERN:
            if "requestState" in params:
                out = await self._redeem(req, entry, args, digest, verdict, params)
            elif _form_capable(_request_capabilities(params).get("elicitation")):
                return self._input_required(who, entry, args, digest, verdict)
            else:
                out = await self._queue(req, entry, args, digest, verdict)
        elif req.ask_host is not None and _form_capable(req.capabilities.get("elicitation")):
            out = await self._elicit(req, entry, args, verdict)
        else:
            out = await self._queue(req, entry, args, digest, verdict)
        if out.decision is Outcome.APPROVED and self.config.remember == "session":
            try:
                await self.remembered.keep(session, memo, out.approver or "?")
            except StateError as exc:  # this call goes through (the person said yes); the next one asks again
                log.warning("approval of %s not remembered for the session: %s", entry.qualified, exc)
        return out

    async def _recall(self, session: str, memo: tuple[str, str, str], entry: Target) -> str | None:
        """Who approved this very call earlier in the session; None (ask again) when nobody did or the
        store cannot say: a remembered approval is never assumed."""
        try:
            return await self.remembered.recall(session, memo)
        except StateError as exc:
            log.warning("cannot look up remembered approvals for %s, asking again: %s", entry.qualified, exc)
            return None

    # -- legacy: elicitation/create on the back channel

    async def _elicit(self, req: RequestContext, entry: Target, args: dict[str, Any], verdict: Verdict) -> Verdict:
        prompt = prompt_for(self.ctx, req.principal, entry, args, verdict)
        params: Message = {"message": prompt, "requestedSchema": APPROVAL_SCHEMA}
        if req.protocol_version >= "2025-11-25":
            params = {"mode": "form", **params}  # 2025-06-18 hosts know no `mode`
        timeout = self.config.timeout
        start = time.monotonic()
        assert req.ask_host is not None
        response = await req.ask_host("elicitation/create", params, timeout)
        wait = time.monotonic() - start
        if "error" in response:
            if wait >= timeout * 0.99:
                return rejected(verdict, entry, f"no human answered within {timeout:g}s", "timeout", "elicitation", wait)
            message = response["error"].get("message") if isinstance(response["error"], dict) else None
            log.warning("the host refused the approval elicitation: %s", message)
            return rejected(verdict, entry, "the host could not ask a human for approval", "error", "elicitation", wait)
        return from_elicit_result(verdict, entry, response.get("result"), "elicitation", wait, _host_name(req), None)

    # -- 2026-07-28: input_required with a sealed, single-use requestState

    def _input_required(self, who: Principal, entry: Target, args: dict[str, Any], digest: str,
                        verdict: Verdict) -> Verdict:
        now = self.ctx.clock()
        nonce = secrets.token_hex(16)
        state = self.sealer.seal({
            "v": STATE_VERSION,
            "n": nonce,
            "p": principal_tag(who),
            "t": entry.qualified,
            "a": digest,
            "iat": now,
            "exp": now + self.config.timeout,
        })
        prompt = prompt_for(self.ctx, who, entry, args, verdict)
        elicitation: Message = {
            "method": "elicitation/create",
            "params": {"mode": "form", "message": prompt, "requestedSchema": APPROVAL_SCHEMA},
        }
        result: Message = {"resultType": "input_required", "inputRequests": {APPROVAL_KEY: elicitation},
                           "requestState": state}
        return asked(verdict, result, nonce)

    async def _redeem(self, req: RequestContext, entry: Target, args: dict[str, Any], digest: str,
                      verdict: Verdict, params: Message) -> Verdict:
        who = req.principal
        now = self.ctx.clock()
        state = self.sealer.open(params.get("requestState"))

        def invalid(why: str, nonce: str | None = None) -> Verdict:
            log.warning("refused an approval requestState for %s: %s", entry.qualified, why)
            return rejected(verdict, entry, "the approval state is invalid, expired or already used", "invalid_state",
                            "input_required", 0.0, None, nonce)

        if state is None or "k" in state:
            return invalid("not sealed by this guard, or altered")
        nonce = state.get("n")
        exp = state.get("exp")
        iat = state.get("iat")
        if not isinstance(nonce, str) or not isinstance(exp, int | float) or not isinstance(iat, int | float):
            return invalid("malformed", None)
        if now >= exp:
            return invalid("expired", nonce)
        if state.get("p") != principal_tag(who) or state.get("t") != entry.qualified or state.get("a") != digest:
            return invalid("bound to a different principal, tool or arguments", nonce)
        if await self.ctx.store.consume([Counter(f"approval-state:{nonce}", 1, float(exp) + 60.0)]) is not None:
            return invalid("already used", nonce)
        wait = max(0.0, now - float(iat))
        responses = params.get("inputResponses")
        answer = responses.get(APPROVAL_KEY) if isinstance(responses, dict) else None
        if answer is None:
            return self._input_required(who, entry, args, digest, verdict)  # a missing response: ask again
        return from_elicit_result(verdict, entry, answer, "input_required", wait, _host_name(req), nonce)

    # -- no elicitation: the approval queue in the state store

    async def _queue(self, req: RequestContext, entry: Target, args: dict[str, Any], digest: str,
                     verdict: Verdict) -> Verdict:
        store = self.ctx.store
        timeout = self.config.timeout
        start = time.monotonic()
        approval_id = await store.approval_create(request_record(self.ctx, req, entry, args, digest, verdict))
        where = answer_options(self.ctx.config)
        log.warning(
            "approval %s: %s for %s waits up to %gs for a human: mcp-guard approvals approve %s%s (or reject %s%s)",
            approval_id, entry.qualified, " > ".join(req.principal.chain), timeout, approval_id, where, approval_id,
            where,
        )
        await tell_waiting(req, entry, approval_id, timeout)
        try:
            record = await store.approval_wait(approval_id, timeout)
        except BaseException:
            # the caller went away (cancelled), the guard drained, or the store failed: nobody waits
            # for this request any more, so it must never become answerable (``abandoned``, audited)
            await self._abandon(req, entry, digest, verdict, approval_id, time.monotonic() - start)
            raise
        wait = time.monotonic() - start
        if record is None:
            return rejected(verdict, entry, f"no human answered within {timeout:g}s", "timeout", "queue", wait, None,
                            approval_id)
        return answered(verdict, entry, record, "queue", wait)

    async def _abandon(self, req: RequestContext, entry: Target, digest: str, verdict: Verdict, approval_id: str,
                       wait: float) -> None:
        """Best effort (the original error wins): withdraw the request in the store and audit it."""
        try:
            await self.ctx.store.approval_abandon(approval_id, ABANDONED_WHY)
        except StateError:
            log.debug("could not withdraw approval %s", approval_id)
        if self.ctx.audit is not None:
            try:
                self.ctx.audit.append(abandoned_record(req, entry, digest, verdict, approval_id, wait))
            except AuditError as exc:
                log.error("audit write failed for abandoned approval %s: %s", approval_id, exc)


def make_approver(ctx: GuardContext) -> GuardApprover:
    """The approver ``build_context`` installs: a random state-sealing key per guard, or the one
    derived from ``approvals.state_key`` so every replica of a ``serve`` deployment opens the
    ``requestState`` another sealed (single use still holds: the nonce is spent in the shared store)."""
    return GuardApprover(ctx, sealer_key(ctx.config.approvals.state_key))


__all__ = ["GuardApprover", "make_approver"]
