"""What a call leaves on the event loop for the export threads: one record per scope, turned into
spans and metric points on those threads only.

The event loop notes the facts of a request (its ids, times, method, the request record's fields,
the outcome) in a slotted record and appends it to the span queue and to its instrument's queue;
that is all telemetry costs a call.  The span export thread asks ``wire()`` for the key of the
span's kind of call (``wire`` encodes its name and attributes once per key) and the few fields
that differ per span; it calls ``light()`` to build the span's attribute sets (through the
``Recorder``'s caches, which only that thread touches) for a new key, a span with an event, or an
exporter that takes SDK spans.  The metric reader's thread calls ``metric_key()`` for the point's
key (and ``metric_attrs()`` the first time a key is seen).  A record is never changed once its
scope has ended, so either thread may read it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, TraceState

from mcp_guard.telemetry import attributes as a
from mcp_guard.telemetry.recorder import Recorder, Upstream
from mcp_guard.telemetry.spans import LightSpan, RemoteParent

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from mcp_guard.decision import Verdict
    from mcp_guard.identity import Principal
    from mcp_guard.request import Target
    from mcp_guard.telemetry.wire import Wired

_NONE: Mapping[str, AttributeValue] = {}
_getrandbits = random.getrandbits
Outcome = tuple["str | None", "str | None", "str | None"]  # (error.type, rpc status code, description)
_SUCCESS: Outcome = (None, None, None)
_NAMED = frozenset(("tools/call", "prompts/get"))  # the methods whose params.name is an attribute (``a.target_of``)


def _new_id(bits: int) -> int:
    while True:
        value = random.getrandbits(bits)
        if value:
            return value


def _mark(span: LightSpan, outcome: Outcome) -> None:
    """Mark ``span`` with a JSON-RPC error outcome (its attributes become its own copy)."""
    error_type, code, description = outcome
    if error_type is not None:
        attrs = span.attrs = dict(span.attrs)
        attrs[a.ERROR_TYPE] = error_type
        if code is not None:
            attrs[a.RPC_RESPONSE_STATUS_CODE] = code
        span.set_error(description)


def _principal_key(who: Principal) -> tuple[Any, ...]:
    """What a principal's attributes (``a.principal_attributes``, verified) are made of."""
    return (who.user, who.agents, who.purpose, who.verified, who.grant_id)


class SpanRecord:
    """The span fields every scope notes on the loop: W3C ids, sampling, times."""

    __slots__ = ("end", "parent_id", "remote", "sampled", "span_id", "start", "state", "tel", "trace_id", "traced")

    tel: Recorder
    traced: bool  # a span is made (tracing on); False: only metrics
    trace_id: int
    span_id: int
    parent_id: int  # 0: a root span
    remote: bool
    sampled: bool
    state: TraceState | None
    start: int
    end: int

    def open(self, parent: SpanRecord | None, remote: RemoteParent | None = None) -> None:
        """Take ids under ``parent`` (a span of this request) or ``remote`` (the host's context),
        sampled as the parent was (parent-based always-on, the default sampler) or as the configured
        sampler says for a span with no parent in this request."""
        if parent is not None:
            self.trace_id, self.parent_id, self.sampled, self.state = parent.trace_id, parent.span_id, parent.sampled, parent.state
            self.remote = False
        elif remote is not None:
            self.trace_id, self.parent_id, self.sampled, self.state = remote
            self.remote = True
        else:
            self.trace_id, self.parent_id, self.sampled, self.state = _getrandbits(128) or _new_id(128), 0, True, None
            self.remote = False
        self.span_id = _getrandbits(64) or _new_id(64)
        # a configured sampler decides a request's first span; the spans under it follow it, as the
        # SDK's samplers (the only ones ``spans.sampler`` gives) decide for a local parent: parent-based
        # ones by the parent, the ratio by the trace id (the parent's), always on/off alike
        if parent is None and self.tel.sampler is not None:
            self.sampled, self.state = self.tel.sample(self.span_name(), self.kind(), self.sample_attrs(), self.trace_id,
                                                       self.parent_id, self.sampled, self.state, self.remote)

    def span_name(self) -> str:
        raise NotImplementedError

    def kind(self) -> SpanKind:
        raise NotImplementedError

    def sample_attrs(self) -> Mapping[str, AttributeValue]:
        """The attributes a configured sampler is shown (built without the export thread's caches)."""
        raise NotImplementedError

    def new_span(self, attrs: dict[str, AttributeValue]) -> LightSpan:
        span = LightSpan(self.span_name(), self.kind(), self.trace_id, self.span_id, self.parent_id, self.remote,
                         self.sampled, self.state, attrs, self.start)
        span.end = self.end
        return span


class RequestRecord(SpanRecord):
    """One host request: its SERVER span and its ``mcp.server.operation.duration`` point."""

    __slots__ = ("current", "guarded", "listed", "message_id", "method", "name", "outcome", "principal",
                 "session", "uri", "version")

    method: str
    name: Any  # params.name as the host sent it
    uri: Any
    message_id: Any
    current: SpanRecord | None  # the parent of spans started now (the decision's while deciding)
    guarded: DecisionRecord | None  # the decision, for the request's later spans
    outcome: Outcome
    version: str
    session: str | None
    listed: tuple[int, int] | None
    principal: Principal

    def span_name(self) -> str:
        target = a.target_of(self.method, {"name": self.name})[1]
        return f"{self.method} {target}" if target else self.method

    def kind(self) -> SpanKind:
        return SpanKind.SERVER

    def sample_attrs(self) -> Mapping[str, AttributeValue]:
        return Recorder.server_start_attrs(self.method, *a.target_of(self.method, {"name": self.name}))

    def light(self) -> LightSpan:
        tel = self.tel
        span = self.new_span(tel.server_start(self.method, *a.target_of(self.method, {"name": self.name})))
        span.unique[a.JSONRPC_REQUEST_ID] = str(self.message_id)
        if isinstance(self.uri, str):
            span.unique[a.MCP_RESOURCE_URI] = self.uri
        _mark(span, self.outcome)
        guarded = self.guarded
        who = (guarded.guarded_attrs() if guarded is not None
               else a.principal_attributes(self.principal) if self.method not in a.UNGUARDED else _NONE)
        tel.server_end(span, self.version, self.session, self.listed, who, private=self.outcome[0] is not None)
        return span

    def wire(self) -> Wired:
        """(key, JSON-RPC id, other per-request attributes, status, ids and times) of the SERVER span (``wire`` encodes
        it): the slots are read here, where the attribute reads are specialised to one class."""
        guarded, method, name, outcome = self.guarded, self.method, self.name, self.outcome
        who = ((guarded._who or guarded.who()) if guarded is not None  # filled by the decision span's wire()
               else _principal_key(self.principal) if method not in a.UNGUARDED else None)
        key = ("server", method, name if isinstance(name, str) else None, self.version, self.session, self.listed, who,
               outcome[0], outcome[1])
        uri = self.uri
        return (key, str(self.message_id), ((a.MCP_RESOURCE_URI, uri),) if isinstance(uri, str) else (),
                None if outcome[0] is None else (outcome[2] if isinstance(outcome[2], str) else None,),
                self.trace_id, self.span_id, self.parent_id, self.state, self.remote, self.start, self.end)

    def metric_key(self) -> tuple[Any, ...]:
        """The ``mcp.server.operation.duration`` point this request counts in (``metric_attrs``: its
        attributes); read on the metric reader's thread."""
        method, name = self.method, self.name
        return method, self.version, name if method in _NAMED and isinstance(name, str) else None, self.outcome[0]

    def metric_attrs(self) -> Mapping[str, AttributeValue]:
        return a.server_metric(self.method, self.version, *a.target_of(self.method, {"name": self.name}), self.outcome[0])


class DecisionRecord(SpanRecord):
    """One decision: its ``run_guardrail mcp-guard`` span and its ``mcp_guard.decisions`` count."""

    __slots__ = ("_guarded", "_who", "approved_at", "events", "failure", "labels", "principal", "shadow", "target",
                 "verdict")

    target: Target
    principal: Principal
    verdict: Verdict | None
    shadow: Verdict | None
    labels: frozenset[str] | None
    approved_at: int
    events: list[tuple[str, int, Mapping[str, AttributeValue]]] | None  # an exception, noted on the loop
    failure: str | None
    _guarded: Mapping[str, AttributeValue] | None  # None until the export thread built them
    _who: int | tuple[Any, ...] | None

    def span_name(self) -> str:
        return a.GUARDRAIL_SPAN

    def kind(self) -> SpanKind:
        return SpanKind.INTERNAL

    def sample_attrs(self) -> Mapping[str, AttributeValue]:
        return Recorder.guardrail_attrs(self.target, self.principal, a.principal_attributes(self.principal))

    def _decided(self) -> tuple[Mapping[str, AttributeValue], Mapping[str, AttributeValue]]:
        verdict, target = self.verdict, self.target
        assert verdict is not None
        decided, outcome = a.decided(verdict.decision, tuple(verdict.policy_ids), tuple(verdict.rule_ids), verdict.reason,
                                     target.upstream, verdict.approver)
        if self.labels is not None:  # the flow step ran: the labels the session held when decided
            labels: Mapping[str, AttributeValue] = {a.SESSION_LABELS: tuple(sorted(self.labels))}
            decided, outcome = {**decided, **labels}, {**outcome, **labels}
        return decided, outcome

    def who(self) -> int | tuple[Any, ...]:
        """What ``guarded_attrs`` are made of, as the ``Recorder``'s number for it: the three spans of
        a request put it in their ``wire()`` keys, which then hash one int, not this nested tuple."""
        found = self._who
        if found is None:
            verdict, who = self.verdict, self.principal
            assert verdict is not None
            parts = ((who.user, who.agents, who.purpose, who.verified, who.grant_id), verdict.decision,
                     verdict.policy_ids, verdict.rule_ids, verdict.reason, self.target.upstream, verdict.approver,
                     self.labels)
            try:
                found = self._who = self.tel.number(parts)
            except TypeError:  # an unhashable value: the keys holding it stay unhashable (``wire`` takes ``light()``)
                found = self._who = parts
        return found

    def wire(self) -> Wired:
        """(key, no JSON-RPC id, no other attributes, status, ids and times) of the ``run_guardrail`` span; no key
        for a span with an event (an exception, an approval's outcome)."""
        verdict = self.verdict
        if self.events is not None or verdict is None or verdict.decision in ("approved", "rejected"):
            key = None
        else:
            target, shadow = self.target, self.shadow
            key = ("guardrail", target.qualified, target.kind, self.who(), shadow.decision if shadow is not None else None)
        return key, None, (), None, self.trace_id, self.span_id, self.parent_id, self.state, self.remote, self.start, self.end

    def guarded_attrs(self, *, cached: bool = True) -> Mapping[str, AttributeValue]:
        """Principal + decision: what the request's SERVER and later CLIENT spans carry (built once
        on the export thread; ``cached=False`` for a sampler on the loop, which must not touch it)."""
        if not cached:
            return {**a.principal_attributes(self.principal), **self._decided()[0]}
        found = self._guarded
        if found is None:
            found = self._guarded = self.tel.merged(a.principal_attributes(self.principal), self._decided()[0])
        return found

    def light(self) -> LightSpan:
        tel = self.tel
        span = self.new_span(tel.guardrail_base(self.target, self.principal))
        if self.events is not None:  # ended by an exception
            span.events = self.events
            span.set_error(self.failure)
            return span
        verdict = self.verdict
        assert verdict is not None
        decided, outcome = self._decided()
        span.attrs = tel.merged(span.attrs, outcome)
        if self.shadow is not None:  # a copy: the merged set is shared
            span.attrs = {**span.attrs, a.SHADOW_DECISION: str(self.shadow.decision)}
        if verdict.decision in ("approved", "rejected"):
            event: dict[str, AttributeValue] = {a.DECISION: decided[a.DECISION]}
            if verdict.approver:
                event[a.APPROVER] = a.text(verdict.approver)
            span.add_event(a.APPROVAL_EVENT, self.approved_at, event)
        return span

    def metric_key(self) -> tuple[Any, ...]:
        """The ``mcp_guard.decisions`` point this decision counts in: never a resource URI."""
        verdict, target = self.verdict, self.target
        assert verdict is not None
        kind = target.kind
        return str(verdict.decision), target.upstream, target.exposed if kind in a.NAME_ATTR else None, kind

    def metric_attrs(self) -> Mapping[str, AttributeValue]:
        verdict, target = self.verdict, self.target
        assert verdict is not None
        name_attr = a.NAME_ATTR.get(target.kind)
        return {a.DECISION: str(verdict.decision), a.UPSTREAM: a.text(target.upstream),
                **({name_attr: a.text(target.exposed)} if name_attr else {})}


class UpstreamRecord(SpanRecord):
    """One request to an upstream: its CLIENT span and its ``mcp.client.operation.duration`` point."""

    __slots__ = ("failure", "guarded", "method", "name", "on_id", "outcome", "upstream", "upstream_id", "version")

    upstream: Upstream
    version: str
    method: str
    name: Any  # params.name as sent
    guarded: DecisionRecord | None
    upstream_id: int | None
    outcome: Outcome
    failure: tuple[str, str] | None  # (error.type, description) of an exception

    def span_name(self) -> str:
        target = a.target_of(self.method, {"name": self.name})[1]
        return f"{self.method} {target}" if target else self.method

    def kind(self) -> SpanKind:
        return SpanKind.CLIENT

    def _attrs(self) -> tuple[tuple[Any, ...], Mapping[str, AttributeValue], Mapping[str, AttributeValue]]:
        return self.tel.client_attrs(self.upstream, self.version, self.method, *a.target_of(self.method, {"name": self.name}))

    def sample_attrs(self) -> Mapping[str, AttributeValue]:
        base = Recorder.client_attrs_of(self.upstream, self.version, self.method, *a.target_of(self.method, {"name": self.name}))
        return {**base, **self.guarded.guarded_attrs(cached=False)} if self.guarded is not None else base

    def light(self) -> LightSpan:
        base = self._attrs()[1]
        guarded = self.guarded
        span = self.new_span(self.tel.merged(base, guarded.guarded_attrs()) if guarded is not None else base)  # type: ignore[arg-type]
        if self.upstream_id is not None:
            span.unique[a.JSONRPC_REQUEST_ID] = str(self.upstream_id)
        _mark(span, self.outcome)
        if self.failure is not None:
            error_type, description = self.failure
            span.attrs = {**span.attrs, a.ERROR_TYPE: error_type}  # shared: copy, then mark
            span.set_error(description)
        return span

    def wire(self) -> Wired:
        """(key, JSON-RPC id, no other attributes, status, ids and times) of the CLIENT span."""
        upstream, name, guarded, outcome, failure = self.upstream, self.name, self.guarded, self.outcome, self.failure
        key = ("client", upstream.name, self.version, getattr(upstream.config, "url", None), self.method,
               name if isinstance(name, str) else None, (guarded._who or guarded.who()) if guarded is not None else None,
               outcome[0], outcome[1], failure[0] if failure is not None else None)
        upstream_id = self.upstream_id
        error = ((failure[1],) if failure is not None
                 else None if outcome[0] is None else (outcome[2] if isinstance(outcome[2], str) else None,))
        return (key, str(upstream_id) if upstream_id is not None else None, (), error,
                self.trace_id, self.span_id, self.parent_id, self.state, self.remote, self.start, self.end)

    def metric_key(self) -> tuple[Any, ...]:
        """The ``mcp.client.operation.duration`` point this request counts in."""
        upstream, method, name, failure = self.upstream, self.method, self.name, self.failure
        return (upstream.name, self.version, getattr(upstream.config, "url", None), method,
                name if method in _NAMED and isinstance(name, str) else None,
                failure[0] if failure is not None else self.outcome[0])

    def metric_attrs(self) -> Mapping[str, AttributeValue]:
        attrs = Recorder.client_attrs_of(self.upstream, self.version, self.method, *a.target_of(self.method, {"name": self.name}))
        failed = self.failure[0] if self.failure is not None else self.outcome[0]
        return attrs if failed is None else {**attrs, a.ERROR_TYPE: failed}


__all__ = ["DecisionRecord", "RequestRecord", "SpanRecord", "UpstreamRecord"]
