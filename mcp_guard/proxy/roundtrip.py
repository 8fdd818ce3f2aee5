"""A 2026-07-28 upstream's own ``input_required`` round trip, for a 2026-07-28 host.

A 2026-07-28 upstream that needs input answers ``tools/call`` with ``resultType: "input_required"``,
its questions under ``inputRequests`` and an opaque ``requestState``; the host asks its user and
calls again with ``inputResponses`` and that state.  The guard stands between the two, so:

- each question is mediated like any request from an upstream to the host: ``roots/list`` is
  answered by the guard from the upstream's configured ``roots`` (or passed on when they are the
  host's own and the host declared roots), sampling and elicitation need the capability the host
  declared on this request, and whatever a question brings the host takes the upstream's flow
  labels first.  One question the guard cannot pass on fails the call with one sentence;
- the upstream's state goes to the host only inside the guard's own sealed envelope
  (AES-256-GCM, the key of ``approvals.state_key`` so every replica opens it): bound to the
  upstream, the tool, the arguments' digest, the principal (and in ``run`` the session), with an
  expiry and a single-use nonce spent in the state store.  The host's retry is refused with one
  sentence, and audited, when the envelope is forged, altered, expired, used, or issued for another
  call; otherwise the upstream gets back its own state and the host's answers to the questions it
  was actually asked (answers the guard gave itself cannot be overridden).  The retry is a new call:
  the policy decides it again.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_guard.decision import Kind, Outcome, Verdict
from mcp_guard.errors import RpcError
from mcp_guard.jsonrpc import INVALID_PARAMS, SERVER_TO_CLIENT, Message, result, tool_error
from mcp_guard.proxy.approval_seal import StateSealer, principal_tag, sealer_key
from mcp_guard.proxy.relay import STATE_PREFIX as RELAY_PREFIX
from mcp_guard.state.base import Counter

if TYPE_CHECKING:
    from mcp_guard.proxy.context import GuardContext
    from mcp_guard.request import RequestContext, Target
    from mcp_guard.upstreams.connection import Upstream

PREFIX = "mcp-guard-upstream."
ROUND_TRIP_KEYS = ("requestState", "inputResponses")  # a host's retry: never forwarded as the host sent them
STATE_SECONDS = 600.0  # how long a host may take to answer an upstream's questions
MAX_ENVELOPE_CHARS = 1 << 20  # an upstream's state may carry sampled results; the host's message limit still applies
_AAD = b"mcp-guard/upstream-state/v1"
VERSION = 1
REFUSED = "the requestState is not one mcp-guard issued for this call, or it expired or was used"

# what a hub tells its upstreams when its hosts declare capabilities per request (serve's callers, a
# 2026-07-28 host of run): each question is put to the request that caused it, and refused when that
# request did not declare what it needs, or when no single request did
RELAYED_TO_CALLERS: Message = {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}

Brings = Callable[["Upstream", Message], Awaitable[bool]]
AuditRefused = Callable[..., Awaitable[None]]  # Pipeline.audit_refused


class Refused(Exception):
    """A host's retry the guard will not forward: ``why`` is for the log and the audit."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def relayable(up: Upstream, capabilities: Message) -> Message:
    """What the guard can do for ``up`` when asked: the host's sampling and elicitation as it
    declared them, and roots when ``roots:`` gives the upstream a list or the host's own roots."""
    caps: Message = {key: capabilities[key] for key in ("sampling", "elicitation") if key in capabilities}
    roots = up.config.roots
    if isinstance(roots, tuple) or (roots == "pass" and "roots" in capabilities):
        caps["roots"] = {"listChanged": roots == "pass"}
    return caps


def configured_roots(up: Upstream) -> Message | None:
    """The roots ``roots:`` gives this upstream (a fixed list, or none), or None: the host's own."""
    roots = up.config.roots
    if isinstance(roots, tuple):
        return {"roots": [{"uri": "file://" + p, "name": p.rsplit("/", 1)[-1] or p} for p in roots]}
    return {"roots": []} if roots == "none" else None


def is_input_required(response: Message) -> bool:
    out = response.get("result")
    return isinstance(out, dict) and out.get("resultType") == "input_required"


def holds(params: Message) -> bool:
    """A retry that carries the guard's envelope of an upstream's state."""
    state = params.get("requestState")
    return isinstance(state, str) and state.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class Bound:
    """What an envelope is issued for: the call's upstream, tool, arguments and caller."""

    upstream: str
    qualified: str
    args: str  # the arguments' digest
    principal: str  # principal_tag
    session: str  # run: the session id; serve: empty (a 2026-07-28 caller has no session)


class RoundTrips:
    """Seals and opens the envelopes of one guard (every session of a ``serve`` shares it)."""

    def __init__(self, ctx: GuardContext, *, per_session: bool) -> None:
        self.ctx = ctx
        self._sealer = StateSealer(sealer_key(ctx.config.approvals.state_key), _AAD, max_chars=MAX_ENVELOPE_CHARS)
        self._per_session = per_session

    def bound(self, req: RequestContext, target: Target, args_digest: str) -> Bound:
        return Bound(target.upstream, target.qualified, args_digest, principal_tag(req.principal),
                     req.session_id if self._per_session else "")

    async def resume(self, req: RequestContext, target: Target, args_digest: str, params: Message,
                     audit_refused: AuditRefused) -> tuple[Bound, Message]:
        """What this call is bound to, and the upstream's own state and the host's answers when it
        is a retry with the guard's envelope; a refused envelope is audited and answered -32602."""
        bound = self.bound(req, target, args_digest)
        if not holds(params):
            return bound, {}
        try:
            return bound, await self.redeem(params, bound)
        except Refused as exc:
            await audit_refused(req, Kind.TOOL, params.get("name"), Verdict(Outcome.DENY, f"mcp-guard refused the "
                                f"requestState: {exc.why}"), target.upstream, target.qualified)
            raise RpcError(INVALID_PARAMS, refusal_text()) from None

    async def pass_on(self, response: Message, up: Upstream, bound: Bound, capabilities: Message,
                      brings: Brings) -> tuple[Message, Message | None]:
        """The upstream's ``input_required`` answer as the host gets it: the questions the host may
        be asked, the rest answered here, and the upstream's state sealed; or a tool error.  Any
        other answer (a result, or the guard's own relay's question) is returned as it is.  When the
        guard answered every question itself, the second item is what to call the upstream again
        with (its state and those answers), and the host is not involved."""
        out = response.get("result")
        if not is_input_required(response) or not isinstance(out, dict) or str(out.get("requestState")).startswith(RELAY_PREFIX):
            return response, None
        rid = response.get("id")
        questions = out.get("inputRequests")
        if not isinstance(questions, dict) or not questions:
            return result(rid, tool_error(f"mcp-guard could not complete {bound.qualified}: the upstream asked for input without saying which")), None
        asked: Message = {}
        answered: Message = {}
        for key, question in questions.items():
            method = question.get("method") if isinstance(question, dict) else None
            params = question.get("params") if isinstance(question, dict) else None
            kind = SERVER_TO_CLIENT.get(method) if isinstance(method, str) else None
            own = configured_roots(up) if kind == "roots" else None
            if own is not None:
                answered[key] = own
                continue
            if kind is None or kind not in capabilities or (kind == "roots" and up.config.roots != "pass"):
                return result(rid, tool_error(f"mcp-guard could not complete {bound.qualified}: the upstream asked for "
                                              f"{method}, which mcp-guard cannot pass on to this host")), None
            message = {"method": method, "params": params if isinstance(params, dict) else {}}
            if not await brings(up, message):
                return result(rid, tool_error(f"mcp-guard could not complete {bound.qualified}: what the upstream asked "
                                              "for cannot be recorded")), None
            asked[key] = message
        if not asked:  # nothing for the host: the upstream is called again at once
            return response, {"inputResponses": answered, **({"requestState": out["requestState"]} if "requestState" in out else {})}
        now = self.ctx.clock()
        payload = {"v": VERSION, "n": secrets.token_urlsafe(16), "exp": now + STATE_SECONDS, "u": bound.upstream,
                   "t": bound.qualified, "a": bound.args, "p": bound.principal, "s": bound.session,
                   "keys": sorted(asked), "own": answered}
        if "requestState" in out:
            payload["rs"] = out["requestState"]
        shown = {k: v for k, v in out.items() if k not in ("inputRequests", "requestState")}
        return result(rid, {**shown, "inputRequests": asked, "requestState": PREFIX + self._sealer.seal(payload)}), None

    async def redeem(self, params: Message, bound: Bound) -> Message:
        """The retry's ``requestState``/``inputResponses`` as the upstream gets them; ``Refused``
        when the envelope is not one this guard issued for this very call, still fresh and unused."""
        state = self._sealer.open(str(params["requestState"])[len(PREFIX):])
        if state is None:
            raise Refused("not sealed by this guard, or altered")
        nonce, exp = state.get("n"), state.get("exp")
        if not isinstance(nonce, str) or not isinstance(exp, int | float):
            raise Refused("malformed")
        if self.ctx.clock() >= exp:
            raise Refused("expired")
        if (state.get("u"), state.get("t"), state.get("a"), state.get("p"), state.get("s")) != (
                bound.upstream, bound.qualified, bound.args, bound.principal, bound.session):
            raise Refused("issued for another upstream, tool, arguments, caller or session")
        if await self.ctx.store.consume([Counter(f"upstream-state:{nonce}", 1, float(exp) + 60.0)]) is not None:
            raise Refused("already used")
        given = params.get("inputResponses")
        given = given if isinstance(given, dict) else {}
        own = state.get("own")
        own = own if isinstance(own, dict) else {}
        answers = {key: given[key] for key in state.get("keys") or () if key in given}
        out: Message = {"inputResponses": {**answers, **own}}
        if "rs" in state:
            out["requestState"] = state["rs"]
        return out


def refusal_text(_why: Any = None) -> str:
    """What the host is told about a refused envelope (the same for every reason: no oracle)."""
    return f"Invalid params: {REFUSED}"


__all__ = ["PREFIX", "REFUSED", "RELAYED_TO_CALLERS", "ROUND_TRIP_KEYS", "Bound", "Refused", "RoundTrips", "configured_roots", "holds", "is_input_required",
           "refusal_text", "relayable"]
