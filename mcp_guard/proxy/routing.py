"""Routing: which upstream owns a tool, resource, prompt or completion, and what a principal may see.

Every list the host gets is aggregated from the upstreams, filtered to what some rule could allow
and every grant link permits, and paginated by the guard.  Every request about one target is
resolved here to a ``Target`` (or refused as unknown: a hidden name answers exactly like a name
that does not exist, and the refusal is audited) and handed to the call pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from mcp_guard.audit import args_hash
from mcp_guard.decision import Kind, is_visible
from mcp_guard.errors import RpcError, UpstreamError
from mcp_guard.jsonrpc import (
    INVALID_PARAMS,
    META_CLIENT_CAPABILITIES,
    META_LOG_LEVEL,
    Era,
    Message,
    result,
    strip_meta,
    tool_error,
)
from mcp_guard.proxy.catalogue import Catalogue
from mcp_guard.proxy.completion import filter_values, hidden_values
from mcp_guard.proxy.owners import Owners, ready
from mcp_guard.proxy.pages import PAGE_SIZE, decode_cursor, encode_cursor, page
from mcp_guard.proxy.pipeline import Pipeline, unknown_verdict
from mcp_guard.proxy.relay import MAX_ROUNDS, Relay
from mcp_guard.proxy.roundtrip import ROUND_TRIP_KEYS, Bound, Brings, RoundTrips, is_input_required, relayable
from mcp_guard.request import RequestContext, Target
from mcp_guard.upstreams.connection import Status, Upstream

if TYPE_CHECKING:
    from mcp_guard.grants import GrantChain
    from mcp_guard.identity import Principal
    from mcp_guard.policy import PolicySet

log = logging.getLogger("mcp_guard.routing")

RESOURCE_NOT_FOUND = -32002  # what some servers answer for an unknown URI (the MCP spec now says -32602)

_UNKNOWN = {Kind.TOOL: "Unknown tool", Kind.PROMPT: "Unknown prompt"}
_ROUND_TRIP = frozenset(ROUND_TRIP_KEYS)
_MODERN = Era.MODERN  # read per call: globals (``Era.MODERN`` is an enum metaclass hook on 3.11)


def unknown_text(kind: Kind, name: Any) -> str:
    """The answer for a name that does not exist, and so for a hidden one (no existence oracle)."""
    return f"{_UNKNOWN.get(kind, 'Resource not found')}: {name}"


LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def upstream_params(params: Message, upstream: Upstream, capabilities: Message | None = None) -> Message:
    """``params`` as the upstream gets them: without the host's era keys and the guard's own, but
    with the host's log-level opt-in for a 2026-07-28 upstream (it emits logs only for a request
    that carries one) and, given the host's ``capabilities``, what the guard can be asked for it."""
    clean = strip_meta(params, drop_reserved=True) or params
    meta = params.get("_meta")
    level = meta.get(META_LOG_LEVEL) if isinstance(meta, dict) else None
    if upstream.era != _MODERN or (level not in LOG_LEVELS and capabilities is None):
        return clean
    kept = clean.get("_meta")
    added: Message = {META_LOG_LEVEL: level} if level in LOG_LEVELS else {}
    if capabilities is not None:
        added[META_CLIENT_CAPABILITIES] = relayable(upstream, capabilities)
    return {**clean, "_meta": {**(kept if isinstance(kept, dict) else {}), **added}}


def params_of(message: Message, method: str) -> Message:
    """The request's ``params`` object (absent = empty); anything else is invalid params."""
    params = message.get("params")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, f"Invalid params: {method} needs an object as params")
    return params


class UpstreamCall(Protocol):
    """How a forwarded request is sent: ``Upstream.call``, or in serve through the record of who sent it."""

    async def __call__(self, up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Message: ...


async def _plain_call(up: Upstream, method: str, params: Message, on_id: Callable[[int], None]) -> Message:
    return await up.call(method, params, on_id=on_id)


class Router:
    """One session's routing: resolves targets, filters lists, forwards through the pipeline."""

    def __init__(
        self,
        policies: Callable[[], PolicySet],
        upstreams: Mapping[str, Upstream],
        catalogue: Catalogue,
        owners: Owners,
        pipeline: Pipeline,
        relay: Relay,
        track: Callable[[Any, Upstream, int], None],
        call: UpstreamCall | None = None,
        upstream_level: Callable[[int], int] = lambda rank: rank,
        *,
        round_trips: RoundTrips | None = None,
        brings: Brings | None = None,
    ) -> None:
        self._policies = policies
        self.upstreams = upstreams
        self.catalogue = catalogue
        self.owners = owners
        self.pipeline = pipeline
        self.relay = relay
        self._track = track
        self._call: UpstreamCall = call or _plain_call
        self._upstream_level = upstream_level  # serve: the lowest level any caller of the shared upstreams asked for
        self._round_trips = round_trips  # a 2026-07-28 upstream's own input_required, for a 2026-07-28 host
        self._brings = brings
        self.log_level: int | None = None  # what this session asked for with logging/setLevel (index in LOG_LEVELS)
        self._visible_cache: tuple[tuple[int, int, Principal], list[Target]] | None = None
        # ``callable_tool``'s answers, valid for (catalogue version, policy set, principal, chain)
        self._callable_for: tuple[int, object, object, object] = (-1, None, None, None)
        self._callable: dict[str, tuple[Target, bool]] = {}

    # ------------------------------------------------------------------ visibility

    def visible(self, req: RequestContext, kind: Kind, qualified: str, annotations: Message | None = None,
                *, judge_uri: bool = True) -> bool:
        return is_visible(self._policies(), req.chain, req.principal, qualified, annotations, kind, judge_uri=judge_uri)

    def shows(self, who: Principal, chain: GrantChain | None, kind: Kind, qualified: str) -> bool:
        """Whether ``who`` may see ``qualified`` at all (for what an upstream tells the host unasked)."""
        return is_visible(self._policies(), chain, who, qualified, None, kind)

    def visible_tools(self, who: Principal, chain: GrantChain | None) -> list[Target]:
        policies = self._policies()
        key = (self.catalogue.version, id(policies), who)
        cached = self._visible_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        tools = [e for e in self.catalogue.entries if not e.held and is_visible(policies, chain, who, e.qualified, e.annotations)]
        self._visible_cache = (key, tools)
        return tools

    def callable_tool(self, req: RequestContext, entry: Target) -> bool:
        """Whether the caller sees (so may call) the catalogued tool ``entry``: ``visible``, which is a
        pure function of the policy set, the chain, the principal and the entry, remembered per tool
        while those and the catalogue stay the same."""
        policies, who, chain = self._policies(), req.principal, req.chain
        version = self.catalogue.version
        key = self._callable_for
        if key[0] != version or key[1] is not policies or key[2] is not who or key[3] is not chain:
            self._callable_for, self._callable = (version, policies, who, chain), {}
        known = self._callable.get(entry.qualified)
        if known is None or known[0] is not entry:
            known = self._callable[entry.qualified] = (entry, is_visible(policies, chain, who, entry.qualified, entry.annotations))
        return known[1]

    def cached_tools(self) -> list[Target] | None:
        return self._visible_cache[1] if self._visible_cache is not None else None

    async def refuse_unknown(self, req: RequestContext, kind: Kind, name: Any, upstream: str | None = None,
                             resolves_to: str | None = None) -> RpcError:
        """Audit a hidden or unknown name (as sent, what a hidden one names, why a tool was left out of
        the listing) and build the answer, the same for both (a resource's names the URI sent)."""
        text = why = unknown_text(kind, name)
        for up in self.upstreams.values() if kind is Kind.TOOL and isinstance(name, str) and resolves_to is None else ():
            if (left_out := up.excluded(name)) is not None:  # an invalid x-mcp-header
                upstream, resolves_to, why = up.name, f"{up.name}/{left_out[0]}", f"{text} (left out: {left_out[1]})"
        await self.pipeline.audit_refused(req, kind, name, unknown_verdict(why), upstream, resolves_to)
        return RpcError(INVALID_PARAMS, text, {"uri": name} if kind is Kind.RESOURCE and isinstance(name, str) else None)

    # ------------------------------------------------------------------ tools

    async def tools_list(self, req: RequestContext) -> Message:
        tools = self.visible_tools(req.principal, req.chain)
        out = page(params_of(req.message, "tools/list"), "tools", [e.definition for e in tools], req.era)
        req.tools_listed = (len(out["tools"]), len(self.catalogue.entries) - len(tools))
        return result(req.message["id"], out)

    async def tools_call(self, req: RequestContext) -> Message:
        message = req.message
        rid = message["id"]
        params = message.get("params")
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: tools/call needs a `name`")
        name = params.get("name")
        entry = self.catalogue.by_exposed.get(name) if isinstance(name, str) else None
        if entry is None and isinstance(name, str):
            entry = self._unstarted_entry(name)
            if entry is not None and self.visible(req, Kind.TOOL, entry.qualified):
                down = self.upstreams[entry.upstream].last_error or f"upstream {entry.upstream} has not started"
                return result(rid, tool_error(f"mcp-guard could not call {entry.qualified}: {down}"))
            entry = None
        if entry is None or entry.held or not self.callable_tool(req, entry):
            raise await self.refuse_unknown(req, Kind.TOOL, name, entry.upstream if entry is not None else None,
                                            entry.qualified if entry is not None else None)
        args = params.get("arguments")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: `arguments` must be an object")
        if req.era == _MODERN and Relay.is_resume(params):  # answers to an upstream's questions
            return await self.relay.resume(params, self._binding(req, entry, args), req.capabilities, rid,
                                           lambda up, uid: self._track(rid, up, uid))
        trips = self._round_trips if req.era == _MODERN and self._brings is not None else None
        bound, resumed = await trips.resume(req, entry, args_hash(args), params, self.pipeline.audit_refused) if trips else (None, {})

        # the forward as a partial of a method: no closure, and no cell per variable of this frame
        return await self.pipeline.run(req, entry, args, partial(self._forward_call, req, entry, args, trips, bound, resumed))

    async def _forward_call(self, req: RequestContext, entry: Target, args: dict[str, Any], trips: RoundTrips | None,
                            bound: Bound | None, resumed: Message, upstream: Upstream) -> Message:
        """An allowed ``tools/call`` sent to ``upstream`` under the upstream's own name for the tool."""
        message = req.message
        rid, params = message["id"], message["params"]
        # never the round-trip keys as the host sent them (the dict comprehension only when it sent one)
        forwarded = dict(params) if _ROUND_TRIP.isdisjoint(params) else {k: v for k, v in params.items() if k not in _ROUND_TRIP}
        if resumed:
            forwarded.update(resumed)
        forwarded["name"] = entry.name
        forwarded = upstream_params(forwarded, upstream, req.capabilities if trips is not None else None)
        if req.era == _MODERN:  # the upstream may ask questions mid-call: relayed as input_required
            return await self._forward_asking(req, entry, args, trips, bound, upstream, forwarded)
        try:
            response = await self._call(upstream, "tools/call", forwarded, partial(self._track, rid, upstream))
        except UpstreamError as exc:
            return result(rid, tool_error(f"mcp-guard could not complete {entry.qualified}: {exc}"))
        response["id"] = rid
        return response

    async def _forward_asking(self, req: RequestContext, entry: Target, args: dict[str, Any], trips: RoundTrips | None,
                              bound: Bound | None, upstream: Upstream, forwarded: Message) -> Message:
        """A 2026-07-28 host's call, whose upstream may ask questions mid-call (relayed as input_required)."""
        rid, params = req.message["id"], req.message["params"]
        ids: list[int] = []

        def on_id(uid: int) -> None:
            ids.append(uid)
            self._track(rid, upstream, uid)

        answered: Message = {}  # what the guard itself answered the upstream's questions with
        for _ in range(MAX_ROUNDS):
            call = asyncio.ensure_future(self._call(upstream, "tools/call", {**forwarded, **answered}, on_id))
            response = await self.relay.start(upstream, call, self._binding(req, entry, args), req.capabilities,
                                              rid, params, ids)
            if trips is None or bound is None or self._brings is None:
                return response
            response, again = await trips.pass_on(response, upstream, bound, req.capabilities, self._brings)
            if again is None:
                return response
            answered = again
        return result(rid, tool_error(f"mcp-guard could not complete {entry.qualified}: the upstream asked for input "
                                      f"more than {MAX_ROUNDS} times"))

    @staticmethod
    def _binding(req: RequestContext, entry: Target, args: dict[str, Any]) -> tuple[str, str, str]:
        """What a parked call's requestState is bound to: who, which tool, which arguments."""
        return (" > ".join(req.principal.chain), entry.qualified, args_hash(args))

    def _unstarted_entry(self, name: str) -> Target | None:
        """The tool ``name`` would be on a prefixed upstream that has never come up (so its tools are
        unknown): policy alone then decides between "upstream down" and "Unknown tool", which says
        nothing about what the upstream really has."""
        for up in self.upstreams.values():
            prefix = f"{up.name}_"
            if up.config.prefix and up.generation == 0 and up.status != Status.READY and name.startswith(prefix) and len(name) > len(prefix):
                tool = name[len(prefix) :]
                return Target(name, up.name, tool, f"{up.name}/{tool}", {"name": name}, None)
        return None

    # ------------------------------------------------------------------ aggregation

    async def listing(self, kind: Kind) -> list[tuple[str, bool]]:
        """Every prompt (``Kind.PROMPT``) or resource and resource template the upstreams list now,
        as ``(UPSTREAM/NAME, judge_uri)`` the way their listings judge them."""
        if kind is Kind.PROMPT:
            return [(f"{up.name}/{it['name']}", True) for up, _exposed, it in await self.owners.list_prompts(self.upstreams)]
        return ([(f"{up.name}/{it['uri']}", True) for up, it in await self.owners.list_resources(self.upstreams)]
                + [(f"{up.name}/{it['uriTemplate']}", False) for up, it in await self.owners.list_templates(self.upstreams)])

    @staticmethod
    def seen(policies: PolicySet, who: Principal, chain: GrantChain | None, kind: Kind,
             listing: list[tuple[str, bool]]) -> frozenset[str]:
        """What of ``listing`` a list would show ``who`` under ``policies`` (to compare two sets)."""
        return frozenset(q for q, judge in listing if is_visible(policies, chain, who, q, None, kind, judge_uri=judge))

    # ------------------------------------------------------------------ lists (filtered, paginated)

    async def resources_list(self, req: RequestContext) -> Message:
        params = params_of(req.message, "resources/list")
        items = [it for up, it in await self.owners.list_resources(self.upstreams) if self.visible(req, Kind.RESOURCE, f"{up.name}/{it['uri']}")]
        return result(req.message["id"], page(params, "resources", items, req.era))

    async def templates_list(self, req: RequestContext) -> Message:
        params = params_of(req.message, "resources/templates/list")
        items = [it for up, it in await self.owners.list_templates(self.upstreams)
                 if self.visible(req, Kind.RESOURCE, f"{up.name}/{it['uriTemplate']}", judge_uri=False)]
        return result(req.message["id"], page(params, "resourceTemplates", items, req.era))

    async def prompts_list(self, req: RequestContext) -> Message:
        params = params_of(req.message, "prompts/list")
        items = [{**it, "name": exposed} for up, exposed, it in await self.owners.list_prompts(self.upstreams)
                 if self.visible(req, Kind.PROMPT, f"{up.name}/{it['name']}")]
        return result(req.message["id"], page(params, "prompts", items, req.era))

    # ------------------------------------------------------------------ resolution

    async def _resource_owner(self, uri: str) -> str | None:
        """The upstream that owns ``uri``: as last listed, else by a template, else the only one."""
        if not self.owners.resources_known:
            await self.owners.list_resources(self.upstreams)
            await self.owners.list_templates(self.upstreams)
        owner = self.owners.resources.get(uri)
        if owner is not None:
            return owner
        for template, (name, pattern) in self.owners.templates.items():
            if uri == template or pattern.fullmatch(uri):
                return name
        up = ready(self.upstreams, "resources")
        return up[0].name if len(up) == 1 else None

    async def resource_target(self, req: RequestContext, uri: Any, *, judge_uri: bool = True) -> Target:
        """A visible resource, or the audited ``Resource not found`` (hidden == unknown)."""
        owner = await self._resource_owner(uri) if isinstance(uri, str) else None
        if owner is None or not isinstance(uri, str) or not self.visible(req, Kind.RESOURCE, f"{owner}/{uri}", judge_uri=judge_uri):
            raise await self.refuse_unknown(req, Kind.RESOURCE, uri, owner)
        return Target(uri, owner, uri, f"{owner}/{uri}", {}, None, kind=Kind.RESOURCE)

    async def prompt_target(self, req: RequestContext, exposed: Any) -> Target:
        """A visible prompt, or the audited ``Unknown prompt`` (hidden == unknown)."""
        if not self.owners.prompts_known:
            await self.owners.list_prompts(self.upstreams)
        found = self.owners.prompts.get(exposed) if isinstance(exposed, str) else None
        if found is None or not self.visible(req, Kind.PROMPT, f"{found[0]}/{found[1]}"):
            raise await self.refuse_unknown(req, Kind.PROMPT, exposed, found[0] if found else None,
                                            f"{found[0]}/{found[1]}" if found else None)
        upstream, name = found
        return Target(str(exposed), upstream, name, f"{upstream}/{name}", {}, None, kind=Kind.PROMPT)

    # ------------------------------------------------------------------ mediated requests

    def _forwarder(self, req: RequestContext, params: Message) -> Callable[[Upstream], Awaitable[Message]]:
        rid = req.message.get("id")
        method = req.method

        async def forward(up: Upstream) -> Message:
            clean = upstream_params(params, up)
            response = await self._call(up, method, clean, lambda uid: self._track(rid, up, uid))
            response["id"] = rid
            if req.era == Era.MODERN and is_input_required(response):  # never its questions unmediated
                return RpcError(INVALID_PARAMS, f"mcp-guard cannot pass on {up.name}'s questions for {method}").to_message(rid)
            return response

        return forward

    async def resource_request(self, req: RequestContext, answer: Callable[[], Message] | None = None) -> Message:
        """resources/read, resources/subscribe, resources/unsubscribe: decided on the exact URI;
        ``answer``: what an allowed request is answered with instead of asking the upstream."""
        params = params_of(req.message, req.method)
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, f"Invalid params: {req.method} needs a `uri` string")
        target = await self.resource_target(req, uri)
        if answer is not None:
            async def local(_up: Upstream) -> Message:
                return answer()
            return await self.pipeline.run(req, target, {"uri": uri}, local)
        forward = self._forwarder(req, params)

        async def same_as_unknown(up: Upstream) -> Message:
            # an allowed URI the upstream does not have answers like one the guard does not know
            response = await forward(up)
            err = response.get("error")
            if isinstance(err, dict) and err.get("code") in (INVALID_PARAMS, RESOURCE_NOT_FOUND):
                return RpcError(INVALID_PARAMS, unknown_text(Kind.RESOURCE, uri), {"uri": uri}).to_message(response.get("id"))
            return response

        return await self.pipeline.run(req, target, {"uri": uri}, same_as_unknown)

    async def prompts_get(self, req: RequestContext) -> Message:
        params = params_of(req.message, "prompts/get")
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: prompts/get needs a `name` string")
        args = params.get("arguments")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: `arguments` must be an object")
        target = await self.prompt_target(req, name)
        return await self.pipeline.run(req, target, args, self._forwarder(req, {**params, "name": target.name}))

    async def complete(self, req: RequestContext) -> Message:
        """completion/complete follows its reference: a prompt is decided as that prompt (with the
        arguments known so far), a resource template as its listing is."""
        params = params_of(req.message, "completion/complete")
        ref = params.get("ref")
        argument = params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict) or not isinstance(argument.get("name"), str):
            raise RpcError(INVALID_PARAMS, "Invalid params: completion/complete needs a `ref` object and an `argument` with a `name`")
        context = params.get("context")
        known = context.get("arguments") if isinstance(context, dict) else None
        args: dict[str, Any] = dict(known) if isinstance(known, dict) else {}
        args[argument["name"]] = argument.get("value")
        kind = ref.get("type")
        if kind == "ref/prompt":
            name = ref.get("name")
            if not isinstance(name, str):
                raise RpcError(INVALID_PARAMS, "Invalid params: a ref/prompt needs a `name` string")
            target = await self.prompt_target(req, name)
            forwarded = {**params, "ref": {**ref, "name": target.name}}
            return await self.pipeline.run(req, target, args, self._completer(req, forwarded, None, args))
        if kind == "ref/resource":
            uri = ref.get("uri")
            if not isinstance(uri, str):
                raise RpcError(INVALID_PARAMS, "Invalid params: a ref/resource needs a `uri` string")
            await self._resource_owner(uri)  # knows the templates from here on
            # a template's URI is a pattern: it is judged as its listing is; any other URI exactly
            exact = uri not in self.owners.templates
            target = await self.resource_target(req, uri, judge_uri=exact)
            return await self.pipeline.run(req, target, args, self._completer(req, params, None if exact else target, args), exact=exact)
        raise RpcError(INVALID_PARAMS, "Invalid params: `ref.type` must be ref/prompt or ref/resource")

    def _completer(self, req: RequestContext, params: Message, template: Target | None,
                   args: dict[str, Any]) -> Callable[[Upstream], Awaitable[Message]]:
        """Forward a completion without the values naming what the caller may not see."""
        forward = self._forwarder(req, params)

        async def complete(up: Upstream) -> Message:
            o = self.owners
            about = (template.upstream, template.name, params["argument"]["name"]) if template is not None else None
            drop = hidden_values(o.prompts, o.resources, {t: u for t, (u, _p) in o.templates.items()},
                                 lambda kind, q, judge: self.visible(req, kind, q, judge_uri=judge), about, args)
            return filter_values(await forward(up), drop)

        return complete

    async def set_level(self, req: RequestContext) -> Message:
        level = params_of(req.message, "logging/setLevel").get("level")
        if level not in LOG_LEVELS:  # an upstream may drop a malformed one unanswered: never ask it
            raise RpcError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
        self.log_level = LOG_LEVELS.index(level)
        await self.send_level(self._upstream_level(self.log_level), params_of(req.message, "logging/setLevel"))
        return result(req.message["id"], {})

    async def send_level(self, rank: int, params: Message | None = None) -> None:
        """Ask every ready upstream that logs to log at ``rank`` (one that fails keeps its level)."""
        sent = {**(params or {}), "level": LOG_LEVELS[rank]}
        for up in ready(self.upstreams, "logging"):
            with contextlib.suppress(RpcError, UpstreamError):
                await up.request("logging/setLevel", sent)


__all__ = ["PAGE_SIZE", "Router", "decode_cursor", "encode_cursor", "page", "params_of", "unknown_text", "upstream_params"]
