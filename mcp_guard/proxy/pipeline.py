"""The call pipeline: one room where every request that reaches an upstream is decided.

``tools/call``, ``resources/read|subscribe|unsubscribe``, ``prompts/get`` and
``completion/complete`` all pass through ``Pipeline.run``::

    resolve (the caller: name -> Target, hidden = unknown) -> revoked? -> evaluate (expiry,
    policies AND every grant link) -> approve? -> limits (counted only when forwarded)
    -> audit (flushed; a failed write refuses) -> forward

It works on a ``RequestContext`` (who asks, under which chain, in which era, with which
capabilities), never on the session, so the approver, the audit and the telemetry see exactly
what the decision saw.  Every refusal is a value turned into a wire answer here, in one place:
a ``CallToolResult`` with ``isError`` for ``tools/call``, a JSON-RPC error for the other kinds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mcp_guard.audit import RecordTemplate, args_hash
from mcp_guard.decision import FORWARDED, Kind, Outcome, PathContext, Verdict, evaluate
from mcp_guard.errors import AuditError, StateError
from mcp_guard.flow.view import SessionView
from mcp_guard.jsonrpc import REFUSED, URL_ELICITATION_REQUIRED, Message, error, result, tool_error
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.flow import FlowTracker, scope_of, what_it_brought
from mcp_guard.proxy.limits import check_limits
from mcp_guard.request import RequestContext, Target
from mcp_guard.upstreams.connection import Status, Upstream

if TYPE_CHECKING:
    from mcp_guard.identity import Principal

log = logging.getLogger("mcp_guard.pipeline")

# the audit field that names the target, per kind
NAME_FIELD = {Kind.TOOL: "tool", Kind.RESOURCE: "uri", Kind.PROMPT: "prompt"}
TEMPLATES = 4096  # audit record templates kept (one per principal, target and verdict), then started afresh
# read per call: globals (``Status.READY`` is an enum metaclass hook on 3.11)
_READY, _APPROVAL_REQUIRED = Status.READY, Outcome.APPROVAL_REQUIRED


class AuditRefusal(Exception):
    """The audit record could not be written: the request is refused (fail closed)."""


def refusal(req: RequestContext, kind: Kind, text: str) -> Message:
    """The wire answer to a visible target's refused request."""
    rid = req.message.get("id")
    if kind is Kind.TOOL and req.method == "tools/call":
        return result(rid, tool_error(text))
    return error(rid, REFUSED, text)


class Pipeline:
    """Shared by every session of a guard: it holds no per-session state."""

    def __init__(self, guard: GuardContext, upstreams: Mapping[str, Upstream]) -> None:
        self.guard = guard
        self.upstreams = upstreams
        self._audit_who: tuple[Principal, Message] | None = None
        self._templates: dict[tuple[object, ...], RecordTemplate] = {}
        self._seen: dict[tuple[object, ...], tuple[Principal, Target, Verdict, RecordTemplate]] = {}
        # (principal, target, verdict, method, untraced, template) of the last common record
        self._last_filled: tuple[Any, ...] = (None, None, None, None, None, None)
        self.flows = FlowTracker(guard.store, int(guard.config.flow.max_content_mib * 2**20), exclusive=guard.flow_exclusive)

    def paths(self, upstream: str) -> PathContext | None:
        """How path conditions are judged for ``upstream``: against its ``workdir``, symlinks
        resolved on the guard's filesystem when it says ``resolve: true``."""
        cfg = self.guard.config.upstreams.get(upstream)
        return cfg.paths if cfg is not None else None

    # ------------------------------------------------------------------ the chain, on every request

    async def chain_refusal(self, req: RequestContext, what: str | None = None) -> Verdict | None:
        """Expiry and revocation of the request's grant chain (``None``: it may go on); ``what``
        names the refused thing in the sentence (default: the method)."""
        chain = req.chain
        if chain is None or req.chain_checked:
            return None
        what = what or req.method
        late = chain.check_time(self.guard.clock())
        if late is not None:
            return Verdict(Outcome.EXPIRED, f"mcp-guard denied {what}: {late}")
        try:
            revoked = await self.guard.store.revoked(chain.link_ids)
        except StateError as exc:
            return Verdict(Outcome.DENY, f"mcp-guard denied {what}: the state store is unavailable ({exc})")
        if revoked is not None:
            return Verdict(Outcome.DENY, f"mcp-guard denied {what}: grant link {revoked} was revoked")
        req.chain_checked = True  # once per request
        return None

    # ------------------------------------------------------------------ decide, approve, limit, audit, forward

    async def run(
        self,
        req: RequestContext,
        target: Target,
        args: dict[str, Any],
        forward: Callable[[Upstream], Awaitable[Message]],
        *,
        exact: bool = True,
    ) -> Message:
        """Decide ``target`` (already resolved and visible) and forward it with ``forward`` if allowed."""
        req.target = target
        with self.guard.telemetry.decision(req):
            req.verdict = verdict = await self._verdict(req, target, args, exact)
        upstream = self.upstreams[target.upstream]
        try:
            if verdict.input_required is not None:  # 2026-07-28: the host is asked to approve
                await self.audit(req, args)
                return result(req.message.get("id"), dict(verdict.input_required))
            if verdict.url_elicitation is not None:  # serve: a human must answer on the approval page first
                await self.audit(req, args)
                return error(req.message.get("id"), URL_ELICITATION_REQUIRED,
                             f"A human must approve {target.qualified} on the guard's approval page first",
                             dict(verdict.url_elicitation))
            if verdict.decision not in FORWARDED:  # ``verdict.forward``, without the property's call
                await self.audit(req, args)
                return refusal(req, target.kind, verdict.reason)
            if upstream.status != _READY:
                down = upstream.last_error or f"upstream {upstream.name} is not available"
                await self.audit(req, args, note=down)
                return refusal(req, target.kind, f"mcp-guard could not call {target.qualified}: {down}")
            await self.audit(req, args)
        except AuditRefusal as exc:
            return refusal(req, target.kind, str(exc))
        answer = await forward(upstream)
        if verdict.brings.entries and req.flow_scope is not None:
            return await self._record_flow(req, target, verdict, answer)
        return answer

    async def _record_flow(self, req: RequestContext, target: Target, verdict: Verdict, answer: Message) -> Message:
        """Add what the answer brings to the session's flow state before the host sees it; if that
        cannot be recorded the answer is withheld (fail closed)."""
        assert req.flow_scope is not None
        body = answer.get("result") if "result" in answer else answer.get("error")
        origins, pieces = what_it_brought(verdict.brings, body, target.qualified, req.audit_record, req.session_labels or frozenset())
        try:
            await self.flows.add(req.flow_scope, origins, pieces)
        except StateError as exc:
            log.error("flow state not recorded for %s: %s", target.qualified, exc)
            return refusal(req, target.kind, f"mcp-guard withheld the answer of {target.qualified}: "
                                             f"what it brings into this session cannot be recorded ({exc})")
        return answer

    async def _flow_view(self, req: RequestContext) -> SessionView | None:
        """The session's flow state as the decision sees it, or None when nothing here uses it."""
        chain = req.chain
        if not self.guard.policies.uses_flow and (chain is None or not (chain.flow.labels or chain.flow.ceiling is not None)):
            return None
        scope = req.flow_scope = scope_of(req.session_key or req.session_id, req.era, chain, req.principal)
        state = await self.flows.get(scope)
        view = self.flows.view(scope, state, chain)
        req.session_labels = view.labels
        return view

    async def _verdict(self, req: RequestContext, target: Target, args: dict[str, Any], exact: bool) -> Verdict:
        guard = self.guard
        who = req.principal
        refused = await self.chain_refusal(req, target.qualified) if req.chain is not None else None
        if refused is not None:
            return refused
        try:
            flow = await self._flow_view(req) if req.chain is not None or guard.policies.uses_flow else None
            if exact:
                # the chain's times were checked for this request above (``chain_refusal``): not again
                now = None if req.chain is None or req.chain_checked else guard.clock()
                verdict = evaluate(guard.policies, req.chain, who, target.qualified, args, target.annotations,
                                   now, kind=target.kind, paths=self.paths(target.upstream), flow=flow)
                shadow = guard.policies.shadow
                if shadow is not None:  # only when some policy says `mode: shadow`
                    req.shadow = evaluate(shadow, req.chain, who, target.qualified, args, target.annotations,
                                          now, kind=target.kind, paths=self.paths(target.upstream), flow=flow)
            else:  # completion of a resource template: decided as its listing is (the URI is a template)
                verdict = self._by_visibility(req, target)
            if verdict.decision is _APPROVAL_REQUIRED:
                verdict = await guard.approver.ask(req, target, args, verdict)
            if verdict.decision in FORWARDED and self.upstreams[target.upstream].status == _READY:
                # only a request that will be forwarded spends a rate slot or a budget unit
                limits = guard.policies.limits(who, target.qualified, target.kind)
                budgets = req.chain.budgets(target.qualified, target.kind) if req.chain is not None else ()
                if limits or budgets:
                    verdict = await check_limits(guard.store, limits, budgets, target, req.limit_scope or req.session_id, verdict)
        except StateError as exc:
            return Verdict(Outcome.DENY, f"mcp-guard denied {target.qualified}: the state store is unavailable ({exc})")
        return verdict

    @staticmethod
    def _by_visibility(req: RequestContext, target: Target) -> Verdict:
        # the chain was checked; the caller resolved a visible target: listing it allows completing it
        return Verdict(Outcome.ALLOW, f"mcp-guard allowed {target.qualified}: it is listed to this principal")

    # ------------------------------------------------------------------ audit

    def _who(self, who: Principal) -> Message:
        # the principal's fields, built once per principal (not per call: ``chain`` is formatted each time)
        known = self._audit_who
        if known is None or known[0] is not who:
            known = self._audit_who = (who, {
                "principal": list(who.chain),
                "user": who.user,
                "agent": who.agent,
                "verified": who.verified,
                "purpose": who.purpose,
                "grant_id": who.grant_id,
            })
        return known[1]

    def _record(self, req: RequestContext, kind: Kind | None, upstream: str | None, name: Any, exposed: Any,
                verdict: Verdict) -> Message:
        record: Message = {
            **self._who(req.principal),
            "session": req.session_key or req.session_id,
            "method": req.method,
            "kind": str(kind) if kind is not None else None,
            "upstream": upstream,
            "decision": str(verdict.decision),
            "policy_ids": list(verdict.policy_ids),
            "rule_ids": list(verdict.rule_ids),
            "reason": verdict.reason,
            "approver": verdict.approver,
        }
        if kind is not None:
            record[NAME_FIELD[kind]] = name
            record["exposed"] = exposed
        return record

    async def audit(self, req: RequestContext, args: dict[str, Any], note: str | None = None) -> None:
        """One record per decision (``req.target``, ``req.verdict``), flushed before the request is
        forwarded; a failed write refuses it."""
        audit = self.guard.audit
        if audit is None:
            return
        target, verdict = req.target, req.verdict
        assert target is not None and verdict is not None
        if (note is None and verdict.approval_channel is None and req.shadow is None and req.session_labels is None
                and target.pin not in ("new", "changed") and not self.guard.config.audit.include_args):
            template, values = self._filled(req, target, verdict, args)
            try:
                digest = audit.append_filled(template, values)
            except AuditError as exc:
                raise self._audit_failed(exc, target.qualified) from None
            if verdict.brings.entries:  # its only reader: what the answer brings names this record
                req.audit_record = int(digest[:12], 16)
            return
        record = self._record(req, target.kind, target.upstream, target.name, target.exposed, verdict)
        record["args_sha256"] = args_hash(args)
        if verdict.approval_channel is not None:
            record["approval"] = {
                "channel": verdict.approval_channel,
                "answer": verdict.approval_answer,
                "wait_s": None if verdict.approval_wait is None else round(verdict.approval_wait, 3),
                "id": verdict.approval_id,
            }
        if note:
            record["note"] = note
        if req.shadow is not None:
            record["shadow_decision"] = str(req.shadow.decision)
            record["shadow_rule_ids"] = list(req.shadow.rule_ids)
        if req.session_labels is not None:
            record["labels"] = sorted(req.session_labels)
            if verdict.forward and verdict.brings.entries:
                record["brings"] = sorted(verdict.brings.labels)
        if target.pin in ("new", "changed"):
            record["pin"] = target.pin
        _trace_ids(req, record)
        if self.guard.config.audit.include_args:
            record["args"] = args
        digest = self._append(record, target.qualified)
        req.audit_record = int(digest[:12], 16) if digest else None

    async def audit_refused(self, req: RequestContext, kind: Kind | None, name: Any, verdict: Verdict, upstream: str | None = None,
                            resolves_to: str | None = None) -> None:
        """A request refused before it had a target: a hidden or unknown name (``unknown``, the
        name as the caller sent it, and for a hidden one the ``UPSTREAM/NAME`` it names), an
        unknown method, or a revoked or expired chain."""
        if self.guard.audit is None:
            return
        record = self._record(req, kind, upstream, name, name, verdict)
        if resolves_to is not None:
            record["resolves_to"] = resolves_to
        _trace_ids(req, record)
        with contextlib.suppress(AuditRefusal):  # refused anyway; the failure is logged
            self._append(record, str(name))

    def _filled(self, req: RequestContext, target: Target, verdict: Verdict, args: dict[str, Any]
                ) -> tuple[RecordTemplate, dict[str, str]]:
        """The common record (no approval, note, shadow, labels, pin or arguments) as a template
        and its slots: the fields that repeat for a principal, target and verdict are encoded once."""
        traced = req.trace
        who = req.principal
        # the same principal, target and verdict objects as a record before (an allowed call's verdict
        # is shared): found by identity, without hashing the fields; the entry holds the objects
        # themselves, so their ids cannot be reused while it lives
        method, plain = req.method, traced is None
        last = self._last_filled  # the record before's objects (a session's repeated call): no key to build
        if last[0] is who and last[1] is target and last[2] is verdict and last[3] == method and last[4] is plain:
            template = last[5]
        else:
            seen = self._seen.get((id(who), id(target), id(verdict), method, plain))
            if seen is not None and seen[0] is who and seen[1] is target and seen[2] is verdict:
                template = seen[3]
            else:
                template = self._template(req, target, verdict)
                if len(self._seen) >= TEMPLATES:
                    self._seen.clear()
                self._seen[id(who), id(target), id(verdict), method, plain] = (who, target, verdict, template)
            self._last_filled = (who, target, verdict, method, plain, template)
        values = {"args_sha256": args_hash(args), "session": req.session_key or req.session_id}
        if traced is not None:
            # the same lowercase, zero-padded hex as ``:032x``/``:016x``, without a `__format__` call each
            values["trace_id"] = traced[0].to_bytes(16, "big").hex()
            values["span_id"] = traced[1].to_bytes(8, "big").hex()
        return template, values

    def _template(self, req: RequestContext, target: Target, verdict: Verdict) -> RecordTemplate:
        """The template of records for this principal, target and verdict (equal values share one)."""
        traced = req.trace
        key = (req.principal, req.method, target.kind, target.upstream, target.name, target.exposed, verdict.decision,
               verdict.policy_ids, verdict.rule_ids, verdict.reason, verdict.approver, traced is None)
        template = self._templates.get(key)
        if template is None:
            audit = self.guard.audit
            assert audit is not None
            if len(self._templates) >= TEMPLATES:
                self._templates.clear()
            fixed = self._record(req, target.kind, target.upstream, target.name, target.exposed, verdict)
            del fixed["session"]
            slots = ("args_sha256", "session") if traced is None else ("args_sha256", "session", "span_id", "trace_id")
            template = self._templates[key] = audit.template(fixed, slots)
        return template

    def _append(self, record: Message, what: str) -> str:
        audit = self.guard.audit
        assert audit is not None
        try:
            return audit.append(record)
        except AuditError as exc:
            raise self._audit_failed(exc, what) from None

    @staticmethod
    def _audit_failed(exc: AuditError, what: str) -> AuditRefusal:
        log.error("audit write failed: %s", exc)
        return AuditRefusal(f"mcp-guard refused {what}: the audit log cannot be written")


def _trace_ids(req: RequestContext, record: Message) -> None:
    """``trace_id``/``span_id`` of the span that decided (absent when tracing is off)."""
    if req.trace is not None:
        record["trace_id"] = f"{req.trace[0]:032x}"
        record["span_id"] = f"{req.trace[1]:016x}"


def unknown_verdict(text: str) -> Verdict:
    return Verdict(Outcome.UNKNOWN, text)


def asked(verdict: Verdict, input_required: Message, nonce: str) -> Verdict:
    """The approver's 2026-07-28 question: the verdict stays ``approval_required``."""
    return replace(verdict, approval_channel="input_required", approval_answer="asked", approval_id=nonce,
                   input_required=input_required)


__all__ = [
    "AuditRefusal",
    "Pipeline",
    "asked",
    "refusal",
    "unknown_verdict",
]
