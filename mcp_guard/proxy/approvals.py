"""Human approval for ``effect: approve`` (docs/approvals.md): ask a person, bound to the exact call.

Three channels, picked per call from what the host can do:

- legacy hosts (2025-06-18 / 2025-11-25) that declared form elicitation get an
  ``elicitation/create`` request on the session's back channel;
- 2026-07-28 hosts that declare ``elicitation`` in the request's ``_meta`` get an
  ``InputRequiredResult`` whose ``requestState`` is sealed (AES-256-GCM, per-guard key) and bound to
  the principal, the tool, the arguments' SHA-256 and an expiry; redeeming it consumes its nonce in
  the state store, so it answers one call once;
- every other host waits in the approval queue of the state store, answered from another terminal
  with ``mcp-guard approvals approve|reject ID``.

In ``serve`` the caller holds every channel above but the queue, so its own answer never counts:
a caller that declared URL-mode elicitation is pointed at the guard's approval page (a
``-32042`` error with the elicitation for handshake-era callers, a url-mode ``input_required`` for
2026-07-28 callers), where the human signs in at the IdP and answers; the retry then finds that
answer in the state store and goes through once.  Every other caller waits in the queue.

No answer within ``approvals.timeout`` is a rejection.  Only an explicit "accept" with
``approve: true`` approves; anything else — decline, cancel, ``approve: false``, an error, a
malformed answer, a forged or replayed state — rejects (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import os
import re
import secrets
import shlex
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcp_guard.audit import args_hash, canonical
from mcp_guard.decision import Kind, Outcome, Verdict
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import META_CLIENT_CAPABILITIES, Era, Message
from mcp_guard.proxy.pipeline import asked
from mcp_guard.proxy.waiting import ABANDONED_WHY, abandoned_record, tell_waiting
from mcp_guard.request import RequestContext
from mcp_guard.state import APPROVED, EXPIRED, PENDING, REJECTED, Counter
from mcp_guard.state.base import APPROVAL_RETENTION

if TYPE_CHECKING:
    from mcp_guard.config import ApprovalsConfig, GuardConfig
    from mcp_guard.proxy.context import GuardContext
    from mcp_guard.request import Target

log = logging.getLogger("mcp_guard.approvals")

APPROVAL_KEY = "mcp-guard.approval"
"""The ``inputRequests`` / ``inputResponses`` key of the guard's own approval question."""

STATE_VERSION = 1
_AAD = b"mcp-guard/approval-state/v1"
_NONCE_BYTES = 12
MAX_STATE_CHARS = 4096  # a sealed state is ~250 characters; anything far larger is not ours

MAX_VALUE_CHARS = 300  # one argument value in the prompt
MAX_ARGS_CHARS = 2000  # all arguments in the prompt
MAX_PREVIEW_CHARS = 400  # the one-line preview stored with a queued request
MAX_HUMAN_REASON = 200
MAX_REMEMBERED_SESSIONS = 10_000
PAGE_PATH = "/approvals/"  # the approval page of ``serve`` (serve/approval_page.py serves it)
PAGE_BINDING_KEY = "approval-binding:"  # state-store key prefix: a page request's binding -> its newest id

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


# --------------------------------------------------------------------------- what the human sees


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(value: Any) -> str:
    """JSON, so quotes, newlines and control characters in an argument stay visibly escaped and an
    argument can never forge a line of the prompt."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return _clip(text, MAX_VALUE_CHARS)


def render_arguments(args: Mapping[str, Any]) -> list[str]:
    """One ``name = value`` line per top-level argument, each value and the whole block capped."""
    if not args:
        return ["  (no arguments)"]
    lines: list[str] = []
    used = 0
    for i, (key, value) in enumerate(args.items()):
        name = key if _PLAIN_KEY.match(key) else _value(key)
        line = f"  {name} = {_value(value)}"
        if used + len(line) > MAX_ARGS_CHARS:
            lines.append(f"  … {len(args) - i} more argument(s) not shown (the approval still binds all of them)")
            break
        lines.append(line)
        used += len(line)
    return lines


def args_preview(args: Mapping[str, Any]) -> str:
    """The compact one-line form kept with a queued request (``mcp-guard approvals list``)."""
    return _clip(orjson.dumps(dict(args), default=repr).decode(), MAX_PREVIEW_CHARS)


def _why(verdict: Verdict) -> str:
    # a label behind the question is named with the request that brought it (information flow)
    cause = verdict.reason[verdict.reason.index("; this session holds"):] if "; this session holds" in verdict.reason else ""
    if verdict.policy_ids:
        return "policy " + ", ".join(verdict.policy_ids) + " requires a human for this call" + cause
    return "the grant chain requires a human for this tool" + cause


_WHAT = {Kind.TOOL: ("Tool", "tool call"), Kind.RESOURCE: ("Resource", "resource request"), Kind.PROMPT: ("Prompt", "prompt request")}


def render_prompt(who: Principal, entry: Target, args: Mapping[str, Any], verdict: Verdict, *, remember: bool = False) -> str:
    """The text of the approval question: who, what, why, and the exact arguments."""
    agent_note = f"verified grant {who.grant_id}" if who.verified and who.grant_id else ("verified grant" if who.verified else "self-asserted")
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


# --------------------------------------------------------------------------- sealed request state


def _principal_tag(who: Principal) -> str:
    material = canonical([list(who.chain), who.purpose, who.grant_id, who.verified])
    return hashlib.sha256(material).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StateSealer:
    """AES-256-GCM envelope for ``requestState``: the host can neither read nor alter it."""

    def __init__(self, key: bytes | None = None, aad: bytes = _AAD) -> None:
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=256))
        self._aad = aad  # what the envelope is for: one purpose's tokens never open as another's

    def seal(self, payload: Mapping[str, Any]) -> str:
        iv = os.urandom(_NONCE_BYTES)
        return _b64(iv + self._aead.encrypt(iv, orjson.dumps(dict(payload)), self._aad))

    def open(self, token: Any) -> dict[str, Any] | None:
        """The payload, or None for anything not sealed by this guard (altered, foreign, garbage)."""
        if not isinstance(token, str) or not token or len(token) > MAX_STATE_CHARS:
            return None
        try:
            raw = _unb64(token)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], self._aad)
            payload = orjson.loads(plain)
        except (ValueError, binascii.Error, InvalidTag, orjson.JSONDecodeError):
            return None
        return payload if isinstance(payload, dict) and payload.get("v") == STATE_VERSION else None


# --------------------------------------------------------------------------- the approver


def _form_capable(elicitation: Any) -> bool:
    """``elicitation: {}`` (2025-06-18 style) means form; 2025-11-25+ may list modes explicitly."""
    return isinstance(elicitation, dict) and (not elicitation or "form" in elicitation)


def _url_capable(elicitation: Any) -> bool:
    """URL mode must be declared explicitly (``elicitation: {url: {}}``, 2025-11-25 and later)."""
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def page_binding(who: Principal, qualified: str, digest: str) -> str:
    """What an approval on the page is bound to: the principal chain (names, purpose, whether
    verified — not the token, which may be refreshed while the human decides), the target and the
    arguments' digest.  A changed argument is a different binding, so a new approval."""
    return hashlib.sha256(canonical([list(who.chain), who.purpose, who.verified, qualified, digest])).hexdigest()[:32]


def _human_reason(content: Any) -> str | None:
    if not isinstance(content, dict):
        return None
    reason = content.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return None
    return _clip(" ".join(reason.split()), MAX_HUMAN_REASON)


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


class GuardApprover:
    """The guard's ``Approver``: picks the channel per call and returns ``approved`` or ``rejected``."""

    def __init__(self, ctx: GuardContext, key: bytes | None = None) -> None:
        self.ctx = ctx
        self.sealer = StateSealer(key)
        # session id -> approvals remembered for it (``remember: session``), the oldest sessions dropped first
        self._remembered: OrderedDict[str, dict[tuple[str, str, str], str]] = OrderedDict()

    @property
    def config(self) -> ApprovalsConfig:
        return self.ctx.config.approvals

    async def ask(self, req: RequestContext, entry: Target, args: dict[str, Any], verdict: Verdict) -> Verdict:
        who = req.principal
        digest = args_hash(args)
        memo_key = (_principal_tag(who), entry.qualified, digest)
        if self.config.remember == "session":
            earlier = self._remembered.get(req.session_id, {}).get(memo_key)
            if earlier is not None:
                return self._approved(verdict, entry, earlier, "remembered", 0.0, None)
        params = req.params
        page = self.ctx.approval_page
        if self.ctx.approval_queue_only:  # the caller must not approve itself: the page or the queue decide
            caps = self._request_capabilities(params) if req.era == Era.MODERN else req.capabilities
            if page is not None and req.era == Era.MODERN and "requestState" in params:
                out = await self._page_redeem(who, entry, args, digest, verdict, params, page)
            elif page is not None and _url_capable(caps.get("elicitation")):
                out = await self._page(req, who, entry, args, digest, verdict, page)
            else:
                out = await self._queue(req, who, entry, args, digest, verdict)
            if out.decision is Outcome.APPROVAL_REQUIRED:
                return out
        elif req.era == Era.MODERN:
            if "requestState" in params:
                out = await self._redeem(req, who, entry, args, digest, verdict, params)
            elif _form_capable(self._request_capabilities(params).get("elicitation")):
                return self._input_required(who, entry, args, digest, verdict)
            else:
                out = await self._queue(req, who, entry, args, digest, verdict)
        elif req.ask_host is not None and _form_capable(req.capabilities.get("elicitation")):
            out = await self._elicit(req, who, entry, args, verdict)
        else:
            out = await self._queue(req, who, entry, args, digest, verdict)
        if out.decision is Outcome.APPROVED and self.config.remember == "session":
            self._remembered.setdefault(req.session_id, {})[memo_key] = out.approver or "?"
            self._remembered.move_to_end(req.session_id)
            while len(self._remembered) > MAX_REMEMBERED_SESSIONS:
                self._remembered.popitem(last=False)
        return out

    # -- verdicts

    @staticmethod
    def _approved(verdict: Verdict, entry: Target, approver: str, channel: str, wait: float, approval_id: str | None) -> Verdict:
        return dataclasses.replace(
            verdict,
            decision=Outcome.APPROVED,
            reason=f"mcp-guard forwarded {entry.qualified}: approved by {approver}",
            approver=approver,
            approval_channel=channel,
            approval_answer="approve",
            approval_wait=wait,
            approval_id=approval_id,
        )

    @staticmethod
    def _rejected(verdict: Verdict, entry: Target, why: str, answer: str, channel: str, wait: float,
                  approver: str | None = None, approval_id: str | None = None) -> Verdict:
        return dataclasses.replace(
            verdict,
            decision=Outcome.REJECTED,
            reason=f"mcp-guard refused {entry.qualified}: {why}",
            approver=approver,
            approval_channel=channel,
            approval_answer=answer,
            approval_wait=wait,
            approval_id=approval_id,
        )

    def _from_elicit_result(self, verdict: Verdict, entry: Target, answer: Any, channel: str, wait: float,
                            approver: str, approval_id: str | None) -> Verdict:
        """Only ``accept`` with ``approve: true`` approves; every other shape rejects."""
        action = answer.get("action") if isinstance(answer, dict) else None
        content = answer.get("content") if isinstance(answer, dict) else None
        reason = _human_reason(content)
        suffix = f" ({reason})" if reason else ""
        if action == "accept" and isinstance(content, dict) and content.get("approve") is True:
            return self._approved(verdict, entry, approver, channel, wait, approval_id)
        if action == "accept":
            return self._rejected(verdict, entry, f"the human rejected it{suffix}", "reject", channel, wait, approver, approval_id)
        if action == "decline":
            return self._rejected(verdict, entry, "the human declined to approve it", "decline", channel, wait, approver, approval_id)
        if action == "cancel":
            return self._rejected(verdict, entry, "the approval request was dismissed without an answer", "cancel", channel, wait, approver, approval_id)
        return self._rejected(verdict, entry, "the approval answer was not understood", "error", channel, wait, None, approval_id)

    def _prompt(self, who: Principal, entry: Target, args: dict[str, Any], verdict: Verdict) -> str:
        return render_prompt(who, entry, args, verdict, remember=self.config.remember == "session")

    @staticmethod
    def _host_name(req: RequestContext) -> str:
        return "host:" + str(req.client_info.get("name") or "unknown")

    @staticmethod
    def _request_capabilities(params: Message) -> Message:
        meta = params.get("_meta")
        caps = meta.get(META_CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
        return caps if isinstance(caps, dict) else {}

    # -- legacy: elicitation/create on the back channel

    async def _elicit(self, req: RequestContext, who: Principal, entry: Target, args: dict[str, Any], verdict: Verdict) -> Verdict:
        params: Message = {"message": self._prompt(who, entry, args, verdict), "requestedSchema": APPROVAL_SCHEMA}
        if req.protocol_version >= "2025-11-25":
            params = {"mode": "form", **params}  # 2025-06-18 hosts know no `mode`
        timeout = self.config.timeout
        start = time.monotonic()
        assert req.ask_host is not None
        response = await req.ask_host("elicitation/create", params, timeout)
        wait = time.monotonic() - start
        if "error" in response:
            if wait >= timeout * 0.99:
                return self._rejected(verdict, entry, f"no human answered within {timeout:g}s", "timeout", "elicitation", wait)
            message = response["error"].get("message") if isinstance(response["error"], dict) else None
            log.warning("the host refused the approval elicitation: %s", message)
            return self._rejected(verdict, entry, "the host could not ask a human for approval", "error", "elicitation", wait)
        return self._from_elicit_result(verdict, entry, response.get("result"), "elicitation", wait, self._host_name(req), None)

    # -- 2026-07-28: input_required with a sealed, single-use requestState

    def _input_required(self, who: Principal, entry: Target, args: dict[str, Any], digest: str, verdict: Verdict) -> Verdict:
        now = self.ctx.clock()
        nonce = secrets.token_hex(16)
        state = self.sealer.seal({
            "v": STATE_VERSION,
            "n": nonce,
            "p": _principal_tag(who),
            "t": entry.qualified,
            "a": digest,
            "iat": now,
            "exp": now + self.config.timeout,
        })
        elicitation: Message = {
            "method": "elicitation/create",
            "params": {"mode": "form", "message": self._prompt(who, entry, args, verdict), "requestedSchema": APPROVAL_SCHEMA},
        }
        result: Message = {"resultType": "input_required", "inputRequests": {APPROVAL_KEY: elicitation}, "requestState": state}
        return asked(verdict, result, nonce)

    async def _redeem(self, req: RequestContext, who: Principal, entry: Target, args: dict[str, Any], digest: str,
                      verdict: Verdict, params: Message) -> Verdict:
        now = self.ctx.clock()
        state = self.sealer.open(params.get("requestState"))

        def invalid(why: str, nonce: str | None = None) -> Verdict:
            log.warning("refused an approval requestState for %s: %s", entry.qualified, why)
            return self._rejected(verdict, entry, "the approval state is invalid, expired or already used", "invalid_state",
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
        if state.get("p") != _principal_tag(who) or state.get("t") != entry.qualified or state.get("a") != digest:
            return invalid("bound to a different principal, tool or arguments", nonce)
        if await self.ctx.store.consume([Counter(f"approval-state:{nonce}", 1, float(exp) + 60.0)]) is not None:
            return invalid("already used", nonce)
        wait = max(0.0, now - float(iat))
        responses = params.get("inputResponses")
        answer = responses.get(APPROVAL_KEY) if isinstance(responses, dict) else None
        if answer is None:
            return self._input_required(who, entry, args, digest, verdict)  # a missing response: ask again
        return self._from_elicit_result(verdict, entry, answer, "input_required", wait, self._host_name(req), nonce)

    # -- no elicitation: the approval queue in the state store

    async def _queue(self, req: RequestContext, who: Principal, entry: Target, args: dict[str, Any], digest: str,
                     verdict: Verdict) -> Verdict:
        store = self.ctx.store
        timeout = self.config.timeout
        start = time.monotonic()
        approval_id = await store.approval_create(self._request_record(req, who, entry, args, digest, verdict))
        where = answer_options(self.ctx.config)
        log.warning(
            "approval %s: %s for %s waits up to %gs for a human: mcp-guard approvals approve %s%s (or reject %s%s)",
            approval_id, entry.qualified, " > ".join(who.chain), timeout, approval_id, where, approval_id, where,
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
            return self._rejected(verdict, entry, f"no human answered within {timeout:g}s", "timeout", "queue", wait, None, approval_id)
        return self._answered(verdict, entry, record, "queue", wait)

    async def _abandon(self, req: RequestContext, entry: Target, digest: str, verdict: Verdict, approval_id: str,
                       wait: float) -> None:
        """Best effort (the original error wins): withdraw the request in the store and audit it."""
        try:
            await self.ctx.store.approval_abandon(approval_id, ABANDONED_WHY)
        except Exception:
            log.debug("could not withdraw approval %s", approval_id)
        if self.ctx.audit is not None:
            try:
                self.ctx.audit.append(abandoned_record(req, entry, digest, verdict, approval_id, wait))
            except Exception as exc:
                log.error("audit write failed for abandoned approval %s: %s", approval_id, exc)

    def _request_record(self, req: RequestContext, who: Principal, entry: Target, args: dict[str, Any], digest: str,
                        verdict: Verdict) -> Message:
        """A request as the queue stores it: the CLI shows the preview; with the ``serve`` approval
        page the full arguments are stored too, so the page never clips the part that matters."""
        record: Message = {
            "session": req.session_id,
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
            "message": self._prompt(who, entry, args, verdict),
            "expires_at": time.time() + self.config.timeout,
        }
        if self.ctx.approval_page is not None:
            record["args"] = args
        return record

    def _answered(self, verdict: Verdict, entry: Target, record: Mapping[str, Any], channel: str, wait: float) -> Verdict:
        """The verdict of a request a human answered (queue, CLI or approval page)."""
        approver = str(record.get("approver") or "unknown")
        approval_id = str(record.get("id"))
        if record.get("status") == APPROVED:
            return self._approved(verdict, entry, approver, channel, wait, approval_id)
        reason = record.get("reason")
        suffix = f" ({_clip(' '.join(str(reason).split()), MAX_HUMAN_REASON)})" if reason else ""
        return self._rejected(verdict, entry, f"rejected by {approver}{suffix}", "reject", channel, wait, approver, approval_id)

    # -- serve: the approval page, pointed at by URL-mode elicitation

    async def _page(self, req: RequestContext, who: Principal, entry: Target, args: dict[str, Any], digest: str,
                    verdict: Verdict, base: str) -> Verdict:
        """A handshake-era retry finds its earlier request by binding (answered: used once; pending:
        pointed at again); otherwise a new request is queued and the caller pointed at its page."""
        binding = page_binding(who, entry.qualified, digest)
        modern = req.era == Era.MODERN
        record = None if modern else await self._page_earlier(binding)
        if record is not None and record.get("status") != PENDING:
            return self._answered(verdict, entry, record, "page", _answer_wait(record))
        if record is None:
            # only page requests carry a binding: a queued call's approval never releases a retry as well
            record = {**self._request_record(req, who, entry, args, digest, verdict), "binding": binding}
            record["id"] = await self.ctx.store.approval_create(record)
            # a handshake-era retry finds it by binding until its answer can no longer be picked up
            await self.ctx.store.value_set(PAGE_BINDING_KEY + binding, str(record["id"]),
                                           _usable_until(record, self.config.timeout))
            log.warning("approval %s: %s for %s waits up to %gs for a human on %s%s%s", record["id"], entry.qualified,
                        " > ".join(who.chain), self.config.timeout, base, PAGE_PATH, record["id"])
        return self._page_ask(who, entry, verdict, base, str(record["id"]), binding, record.get("expires_at"), modern)

    async def _page_earlier(self, binding: str) -> dict[str, Any] | None:
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
        if status in (APPROVED, REJECTED) and now < _usable_until(record, self.config.timeout) and \
                await store.consume([Counter(f"approval-used:{approval_id}", 1, now + APPROVAL_RETENTION)]) is None:
            return record
        return None

    def _page_ask(self, who: Principal, entry: Target, verdict: Verdict, base: str, approval_id: str, binding: str,
                  expires_at: Any, modern: bool) -> Verdict:
        url = f"{base}{PAGE_PATH}{approval_id}"
        message = (f"mcp-guard needs a human to approve {entry.qualified} for {' > '.join(who.chain)}. Open {url}, sign in "
                   "and answer there; then retry the call.")
        elicitation: Message = {"mode": "url", "message": message, "url": url}
        if modern:  # 2026-07-28: no elicitationId; the sealed state names the request
            now = self.ctx.clock()
            state = self.sealer.seal({"v": STATE_VERSION, "k": "page", "n": approval_id, "b": binding, "iat": now,
                                      "exp": _usable_until({"expires_at": expires_at}, self.config.timeout)})
            result: Message = {"resultType": "input_required",
                               "inputRequests": {APPROVAL_KEY: {"method": "elicitation/create", "params": elicitation}},
                               "requestState": state}
            return dataclasses.replace(asked(verdict, result, approval_id), approval_channel="page")
        data = {"elicitations": [{**elicitation, "elicitationId": approval_id}]}
        return dataclasses.replace(verdict, approval_channel="page", approval_answer="asked", approval_id=approval_id,
                                   url_elicitation=data)

    async def _page_redeem(self, who: Principal, entry: Target, args: dict[str, Any], digest: str, verdict: Verdict,
                           params: Message, base: str) -> Verdict:
        """A 2026-07-28 retry: its ``inputResponses`` are ignored; only the stored answer counts."""
        state = self.sealer.open(params.get("requestState"))
        binding = page_binding(who, entry.qualified, digest)

        def invalid(why: str, approval_id: str | None = None) -> Verdict:
            log.warning("refused an approval requestState for %s: %s", entry.qualified, why)
            return self._rejected(verdict, entry, "the approval state is invalid, expired or already used", "invalid_state",
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
            return self._page_ask(who, entry, verdict, base, approval_id, binding, record.get("expires_at"), True)
        if status == EXPIRED:
            return self._rejected(verdict, entry, f"no human answered within {self.config.timeout:g}s", "timeout", "page",
                                  _answer_wait(record), None, approval_id)
        if await self.ctx.store.consume([Counter(f"approval-used:{approval_id}", 1, time.time() + APPROVAL_RETENTION)]) is not None:
            return invalid("already used", approval_id)
        return self._answered(verdict, entry, record, "page", _answer_wait(record))


def _answer_wait(record: Mapping[str, Any]) -> float:
    created, resolved = record.get("created"), record.get("resolved")
    if isinstance(created, int | float) and isinstance(resolved, int | float):
        return max(0.0, float(resolved) - float(created))
    return 0.0


def _usable_until(record: Mapping[str, Any], timeout: float) -> float:
    """An answer on the page can be picked up by a retry until one more ``approvals.timeout`` after
    the request would have expired."""
    expires = record.get("expires_at")
    return (float(expires) if isinstance(expires, int | float) else time.time()) + timeout


def make_approver(ctx: GuardContext) -> GuardApprover:
    """The approver ``build_context`` installs: a random state-sealing key per guard, or the one
    derived from ``approvals.state_key`` so every replica of a ``serve`` deployment opens the
    ``requestState`` another sealed (single use still holds: the nonce is spent in the shared store)."""
    secret = ctx.config.approvals.state_key
    key = hashlib.sha256(b"mcp-guard/approval-state-key/v1\x00" + secret.encode()).digest() if secret else None
    return GuardApprover(ctx, key)


__all__ = [
    "APPROVAL_KEY",
    "APPROVAL_SCHEMA",
    "GuardApprover",
    "StateSealer",
    "args_preview",
    "make_approver",
    "render_arguments",
    "render_prompt",
]
