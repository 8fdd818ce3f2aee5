"""One host session: answers the handshake itself, filters discovery, enforces every tool call and
relays everything else between the host and the upstream that owns it.

Messages are dicts parsed once by the transport.  Only ``initialize``/``server/discover``,
``tools/list`` and ``tools/call`` are interpreted; other requests are routed to their upstream
with the id rewritten and otherwise forwarded as they came.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mcp_guard import __version__, telemetry
from mcp_guard.audit import args_hash
from mcp_guard.config import GuardConfig
from mcp_guard.errors import AuditError, StateError, UpstreamError
from mcp_guard.identity import Principal
from mcp_guard.pinning import PinSet
from mcp_guard.policy import PolicySet
from mcp_guard.proxy import enforce
from mcp_guard.proxy.catalogue import Catalogue, ToolEntry
from mcp_guard.proxy.relay import KIND as RELAYED_KIND
from mcp_guard.proxy.relay import Relay
from mcp_guard.proxy.wire import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    METHOD_NOT_FOUND,
    MODERN,
    Message,
    RpcError,
    error,
    is_notification,
    is_request,
    is_response,
    notification,
    request,
    result,
    strip_meta,
    tool_error,
)
from mcp_guard.upstreams.connection import Upstream

if TYPE_CHECKING:
    from mcp_guard.audit import AuditLog
    from mcp_guard.grants import GrantChain
    from mcp_guard.state import StateStore

log = logging.getLogger("mcp_guard.session")

PAGE_SIZE = 1000  # tools per tools/list page toward the host
CACHEABLE = frozenset(
    {"server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)  # 2026-07-28 results that must carry ttlMs + cacheScope


class HostTransport(Protocol):
    async def send(self, message: Message) -> None: ...


class Approver(Protocol):
    """Asks a human (docs/approvals.md).  Returns the final verdict: approved or rejected."""

    async def ask(self, session: GuardSession, entry: ToolEntry, args: dict[str, Any], verdict: enforce.Verdict, request: Message) -> enforce.Verdict: ...


class NoApprover:
    """Fail closed until a human channel is configured."""

    async def ask(self, session: GuardSession, entry: ToolEntry, args: dict[str, Any], verdict: enforce.Verdict, request: Message) -> enforce.Verdict:
        return enforce.Verdict(
            "rejected",
            f"{verdict.reason}, and no human approval channel is available",
            verdict.policy_ids,
            verdict.rule_ids,
        )


class InputRequired(Exception):
    """Raised by an approver to answer ``tools/call`` with a 2026-07-28 ``InputRequiredResult``
    (``result``) instead of a ``CallToolResult``; ``verdict`` (approval_required) is audited."""

    def __init__(self, result: Message, verdict: enforce.Verdict) -> None:
        super().__init__("input required")
        self.result = result
        self.verdict = verdict


# tools/call params that belong to the guard's own input_required round trip, never forwarded
_GUARD_ROUND_TRIP = ("requestState", "inputResponses")


@dataclass
class GuardContext:
    """What every session of one guard shares: config, compiled policies, state, audit, identity."""

    config: GuardConfig
    policies: PolicySet
    store: StateStore
    audit: AuditLog | None = None
    chain: GrantChain | None = None
    approver: Approver = field(default_factory=NoApprover)
    pins: PinSet | None = None
    clock: Callable[[], float] = time.time


@dataclass
class _HostRequest:
    """A request the guard sent to the host on behalf of an upstream (sampling, elicitation, roots)."""

    future: asyncio.Future[Message]


class GuardSession:
    """One host session.  On stdio it owns the upstream connections; in ``serve`` mode many
    sessions (one per HTTP session or grant) share those of a ``hub`` session, and each carries
    its own verified grant chain."""

    def __init__(
        self,
        ctx: GuardContext,
        host: HostTransport,
        *,
        hub: GuardSession | None = None,
        chain: GrantChain | None = None,
    ) -> None:
        self.ctx = ctx
        self.host = host
        self.hub = hub
        self.chain = chain if hub is not None else ctx.chain
        self.id = uuid.uuid4().hex
        self.era: str | None = None  # "legacy" | "modern"
        self.protocol_version = LATEST_LEGACY
        self.client_info: Message = {}
        self.client_capabilities: Message = {}
        self.upstreams: dict[str, Upstream]
        self.catalogue: Catalogue
        if hub is not None:
            self.upstreams, self.catalogue = hub.upstreams, hub.catalogue
        else:
            self.upstreams = {name: Upstream(cfg, self) for name, cfg in ctx.config.upstreams.items()}
            self.catalogue = Catalogue(ctx.pins, ctx.config.pinning)
        self._started: asyncio.Task[None] | None = None
        self._inflight: dict[Any, asyncio.Task[None]] = {}
        self._upstream_ids: dict[Any, tuple[Upstream, int]] = {}  # host request id -> where it went
        self._host_ids = 0
        self._host_pending: dict[int, _HostRequest] = {}
        self._visible_cache: tuple[tuple[int, int], list[ToolEntry]] | None = None
        self._prompt_owner: dict[str, tuple[Upstream, str]] = {}
        self._resource_owner: dict[str, Upstream] = {}
        self._agent_default: str | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._relay = Relay()
        self.fatal: str | None = None  # set when the guard must not go on (a start-up error)
        self.on_fatal: Callable[[], None] | None = None
        self._host_initialized = asyncio.Event()  # legacy hosts take requests only after `initialized`
        self._handlers: dict[str, Callable[[Message], Awaitable[Message]]] = {
            "initialize": self._initialize,
            "server/discover": self._discover,
            "ping": self._ping,
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
            "resources/list": self._resources_list,
            "resources/templates/list": self._resource_templates_list,
            "resources/read": self._by_uri,
            "resources/subscribe": self._by_uri,
            "resources/unsubscribe": self._by_uri,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }

    # ------------------------------------------------------------------ identity

    @property
    def principal(self) -> Principal:
        if self.chain is not None:
            return self.chain.principal
        ident = self.ctx.config.identity
        agent = ident.agent or self._agent_default or str(self.client_info.get("name") or "unknown-agent")
        return Principal(user=ident.user or "unknown-user", agents=(agent,), purpose=ident.purpose, verified=False)

    # ------------------------------------------------------------------ host side

    async def handle(self, message: Any) -> None:
        """Entry point for every message the host sends."""
        if not isinstance(message, dict):
            await self.send(error(None, INVALID_REQUEST, "Invalid Request: expected a JSON-RPC object"))
            return
        rid = message.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int, float))):
            # JSON-RPC ids are strings or numbers; anything else cannot be matched (or even hashed)
            await self.send(error(None, INVALID_REQUEST, "Invalid Request: id must be a string or a number"))
            return
        if is_request(message):
            rid = message["id"]
            task = asyncio.get_running_loop().create_task(telemetry.serve(self, message, self._serve))
            self._inflight[rid] = task
        elif is_notification(message):
            await self._host_notification(message)
        elif is_response(message):
            pending = self._host_pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            if pending is not None and not pending.future.done():
                pending.future.set_result(message)
        elif "id" in message:
            await self.send(error(message.get("id"), INVALID_REQUEST, "Invalid Request"))

    async def send(self, message: Message) -> None:
        await self.host.send(message)

    async def _serve(self, message: Message) -> None:
        rid = message["id"]
        method = message.get("method")
        try:
            if not isinstance(method, str):
                raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a string")
            self._note_era(message)
            handler = self._handlers.get(method)
            if method not in ("initialize", "server/discover", "ping"):
                await self._ensure_started()
            response = await (handler(message) if handler is not None else self._forward_other(message))
        except asyncio.CancelledError:
            return  # the host cancelled it: no answer (spec: receivers SHOULD NOT respond)
        except RpcError as exc:
            response = exc.to_message(rid)
        except UpstreamError as exc:
            response = error(rid, INTERNAL_ERROR, str(exc))
        except Exception:
            log.exception("internal error handling %s", method)
            response = error(rid, INTERNAL_ERROR, f"mcp-guard failed to handle {method}; see the guard's log")
        finally:
            self._inflight.pop(rid, None)
            self._upstream_ids.pop(rid, None)
        if self.era != "modern" and isinstance(response.get("result"), dict) and "resultType" in response["result"]:
            out = response["result"]  # from a 2026-07-28 upstream to a handshake-era host
            if out.get("resultType") == "input_required":
                response = error(rid, INTERNAL_ERROR, f"the upstream asked for more input to answer {method}, which mcp-guard does not relay yet")
            else:
                for key in ("resultType", "ttlMs", "cacheScope"):
                    out.pop(key, None)
        if self.era == "modern" and isinstance(response.get("result"), dict):
            out = response["result"]
            out.setdefault("resultType", "complete")
            if method in CACHEABLE and out["resultType"] == "complete":
                # answers may vary by principal, so they are never shared between callers
                out.setdefault("ttlMs", 0)
                out.setdefault("cacheScope", "private")
        telemetry.set_response(response)
        await self.send(response)
        if self.fatal is not None and self.on_fatal is not None:
            self.on_fatal()  # e.g. a tool name collision: answered, now the guard stops

    def _note_era(self, message: Message) -> None:
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get(META_PROTOCOL_VERSION), str) and message.get("method") != "initialize":
            self.era = "modern"
            self.protocol_version = meta[META_PROTOCOL_VERSION]
            if not self.client_info and isinstance(meta.get(META_CLIENT_INFO), dict):
                self.client_info = meta[META_CLIENT_INFO]
            if not self.client_capabilities and isinstance(meta.get(META_CLIENT_CAPABILITIES), dict):
                self.client_capabilities = meta[META_CLIENT_CAPABILITIES]

    async def _host_notification(self, message: Message) -> None:
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/cancelled":
            rid = params.get("requestId")
            where = self._upstream_ids.pop(rid, None)
            if where is not None:
                upstream, upstream_id = where
                await upstream.notify("notifications/cancelled", {**params, "requestId": upstream_id})
            task = self._inflight.pop(rid, None)
            if task is not None:
                task.cancel()
        elif method == "notifications/roots/list_changed":
            for up in self.upstreams.values():
                if up.config.roots == "pass" and up.status == "ready":
                    await up.notify(method, params or None)
        elif method == "notifications/initialized":
            self._host_initialized.set()
        elif method == "notifications/progress":
            return
        else:
            log.debug("host notification %s not relayed", method)

    # ------------------------------------------------------------------ start-up

    async def _ensure_started(self) -> None:
        if self.hub is not None:
            await self.hub._ensure_started()
            return
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start_upstreams())
        await asyncio.shield(self._started)

    def _upstream_capabilities(self, up: Upstream) -> Message:
        """What the guard tells an upstream it can do: only what it can actually relay or answer."""
        caps: Message = {}  # a 2026-07-28 host gets the questions as input_required results (proxy/relay.py)
        for key in ("sampling", "elicitation"):
            if key in self.client_capabilities:
                caps[key] = self.client_capabilities[key]
        roots = up.config.roots
        if isinstance(roots, tuple) or (roots == "pass" and "roots" in self.client_capabilities):
            caps["roots"] = {"listChanged": roots == "pass"}
        return caps

    async def _start_upstreams(self) -> None:
        await asyncio.gather(*(up.start(self._upstream_capabilities(up)) for up in self.upstreams.values()))
        self._rebuild_catalogue()
        for up in self.upstreams.values():
            if up.status != "ready":
                log.error("%s", up.last_error or f"upstream {up.name} did not start")

    def _rebuild_catalogue(self) -> None:
        self.catalogue.rebuild(self.upstreams.values())
        self.ctx.policies.warm(self.tool_names())  # per-tool rule lists built here, not on the first call
        self._visible_cache = None

    def tool_names(self) -> list[str]:
        """Every catalogued tool as ``UPSTREAM/TOOL`` (for warming a freshly loaded policy set)."""
        return [e.qualified for e in self.catalogue.entries]

    def _merged_capabilities(self) -> Message:
        caps: Message = {"tools": {"listChanged": True}}
        for up in self.upstreams.values():
            uc = up.capabilities
            if "resources" in uc:
                r = caps.setdefault("resources", {})
                for flag in ("subscribe", "listChanged"):
                    if isinstance(uc["resources"], dict) and uc["resources"].get(flag):
                        r[flag] = True
            if "prompts" in uc:
                p = caps.setdefault("prompts", {})
                if isinstance(uc["prompts"], dict) and uc["prompts"].get("listChanged"):
                    p["listChanged"] = True
            for simple in ("completions", "logging"):
                if simple in uc:
                    caps[simple] = {}
        return caps

    def _instructions(self) -> str | None:
        parts = [f"[{up.name}] {up.instructions}" for up in self.upstreams.values() if up.instructions]
        return "\n\n".join(parts) if parts else None

    async def _initialize(self, message: Message) -> Message:
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        self.era = "legacy"
        requested = params.get("protocolVersion")
        self.protocol_version = requested if requested in LEGACY_VERSIONS else LATEST_LEGACY
        info, caps = params.get("clientInfo"), params.get("capabilities")
        self.client_info = info if isinstance(info, dict) else {}
        self.client_capabilities = caps if isinstance(caps, dict) else {}
        await self._ensure_started()
        await self._check_collisions()
        out: Message = {
            "protocolVersion": self.protocol_version,
            "capabilities": self._merged_capabilities(),
            "serverInfo": {"name": "mcp-guard", "version": __version__},
        }
        if instructions := self._instructions():
            out["instructions"] = instructions
        return result(message["id"], out)

    async def _discover(self, message: Message) -> Message:
        await self._ensure_started()
        await self._check_collisions()
        out: Message = {
            "supportedVersions": [MODERN, *reversed(LEGACY_VERSIONS)],
            "capabilities": self._merged_capabilities(),
            "_meta": {META_SERVER_INFO: {"name": "mcp-guard", "version": __version__}},
            "ttlMs": 0,
            "cacheScope": "private",
        }
        if instructions := self._instructions():
            out["instructions"] = instructions
        return result(message["id"], out)

    async def _check_collisions(self) -> None:
        if collisions := self.catalogue.collisions():
            self.fatal = "mcp-guard cannot start: " + "; ".join(collisions)
            raise RpcError(INTERNAL_ERROR, self.fatal)

    async def _ping(self, message: Message) -> Message:
        return result(message["id"], {})

    # ------------------------------------------------------------------ tools

    def visible_tools(self) -> list[ToolEntry]:
        key = (self.catalogue.version, id(self.ctx.policies))
        if self._visible_cache is not None and self._visible_cache[0] == key:
            return self._visible_cache[1]
        who = self.principal
        tools = [e for e in self.catalogue.entries if enforce.is_visible(self.ctx.policies, self.chain, who, e)]
        self._visible_cache = (key, tools)
        return tools

    async def _tools_list(self, message: Message) -> Message:
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        tools = self.visible_tools()
        offset = 0
        cursor = params.get("cursor")
        if cursor is not None:
            offset = _decode_cursor(cursor)
        page = tools[offset : offset + PAGE_SIZE]
        out: Message = {"tools": [e.definition for e in page]}
        if offset + PAGE_SIZE < len(tools):
            out["nextCursor"] = _encode_cursor(offset + PAGE_SIZE)
        if self.era == "modern":
            out["ttlMs"] = 0
            out["cacheScope"] = "private"
        telemetry.note_tools(len(page), len(self.catalogue.entries) - len(tools))
        return result(message["id"], out)

    async def _tools_call(self, message: Message) -> Message:
        rid = message["id"]
        params = message.get("params")
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: tools/call needs a `name`")
        name = params.get("name")
        entry = self.catalogue.by_exposed.get(name) if isinstance(name, str) else None
        who = self.principal
        if entry is None and isinstance(name, str):
            entry = self._unstarted_entry(name)
            if entry is not None and enforce.is_visible(self.ctx.policies, self.chain, who, entry):
                down = self.upstreams[entry.upstream].last_error or f"upstream {entry.upstream} has not started"
                return result(rid, tool_error(f"mcp-guard could not call {entry.qualified}: {down}"))
            entry = None
        if entry is None or not enforce.is_visible(self.ctx.policies, self.chain, who, entry):
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        args = params.get("arguments")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: `arguments` must be an object")
        if self.era == "modern" and Relay.is_resume(params):  # answers to an upstream's questions
            return await self._relay.resume(params, self._binding(who, entry, args), self._request_capabilities(message), rid)
        try:
            verdict = await telemetry.decision(self, who, entry, self._verdict(who, entry, args, message))
        except InputRequired as ask:
            try:
                await self._audit(who, entry, args, ask.verdict)
            except _AuditRefusal as exc:
                return result(rid, tool_error(exc.message))
            return result(rid, ask.result)
        upstream = self.upstreams[entry.upstream]
        try:
            if not verdict.forward:
                await self._audit(who, entry, args, verdict)
                return result(rid, tool_error(verdict.reason))
            if upstream.status != "ready":
                down = upstream.last_error or f"upstream {upstream.name} is not available"
                await self._audit(who, entry, args, verdict, note=down)
                return result(rid, tool_error(f"mcp-guard could not call {entry.qualified}: {down}"))
            await self._audit(who, entry, args, verdict)
        except _AuditRefusal as exc:
            return result(rid, tool_error(exc.message))
        forwarded = {k: v for k, v in params.items() if k not in _GUARD_ROUND_TRIP}
        forwarded["name"] = entry.name
        forwarded = strip_meta(forwarded, drop_reserved=True) or forwarded
        if self.era == "modern":  # the upstream may ask questions mid-call: relayed as input_required
            call = asyncio.ensure_future(upstream.call("tools/call", forwarded, on_id=lambda uid: self._track(rid, upstream, uid)))
            return await self._relay.start(upstream, call, self._binding(who, entry, args), self._request_capabilities(message), rid)
        try:
            response = await upstream.call("tools/call", forwarded, on_id=lambda uid: self._track(rid, upstream, uid))
        except UpstreamError as exc:
            return result(rid, tool_error(f"mcp-guard could not complete {entry.qualified}: {exc}"))
        response["id"] = rid
        return response

    @staticmethod
    def _binding(who: Principal, entry: ToolEntry, args: dict[str, Any]) -> tuple[str, str, str]:
        """What a parked call's requestState is bound to: who, which tool, which arguments."""
        return (" > ".join(who.chain), entry.qualified, args_hash(args))

    def _request_capabilities(self, message: Message) -> Message:
        """2026-07-28: the capabilities this very request declares (else the session's)."""
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        caps = meta.get(META_CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
        return caps if isinstance(caps, dict) else self.client_capabilities

    def _unstarted_entry(self, name: str) -> ToolEntry | None:
        """The tool ``name`` would be on a prefixed upstream that has never come up (so its tools are
        unknown): policy alone then decides between "upstream down" and "Unknown tool", which says
        nothing about what the upstream really has."""
        for up in self.upstreams.values():
            prefix = f"{up.name}_"
            if up.config.prefix and up.generation == 0 and up.status != "ready" and name.startswith(prefix) and len(name) > len(prefix):
                tool = name[len(prefix) :]
                return ToolEntry(name, up.name, tool, f"{up.name}/{tool}", {"name": name}, None)
        return None

    async def _verdict(self, who: Principal, entry: ToolEntry, args: dict[str, Any], message: Message) -> enforce.Verdict:
        ctx = self.ctx
        now = ctx.clock()
        try:
            if self.chain is not None:
                revoked = await ctx.store.revoked(self.chain.link_ids)
                if revoked is not None:
                    return enforce.Verdict("deny", f"mcp-guard denied {entry.qualified}: grant link {revoked} was revoked")
            verdict = enforce.decide(ctx.policies, self.chain, who, entry, args, now)
            if verdict.decision == "approval_required":
                verdict = await ctx.approver.ask(self, entry, args, verdict, message)
            if verdict.forward and self.upstreams[entry.upstream].status == "ready":
                # only a call that will be forwarded spends a rate slot or a budget unit
                verdict = await enforce.check_limits(ctx.store, ctx.policies, self.chain, who, entry, self.id, verdict)
        except StateError as exc:
            return enforce.Verdict("deny", f"mcp-guard denied {entry.qualified}: the state store is unavailable ({exc})")
        return verdict

    async def _audit(self, who: Principal, entry: ToolEntry, args: dict[str, Any], verdict: enforce.Verdict, note: str | None = None) -> None:
        """One record per decision, flushed before the call is forwarded; a failed write refuses the call."""
        audit = self.ctx.audit
        if audit is None:
            return
        # the principal's fields, built once per principal (not per call: ``chain`` is formatted each time)
        known: tuple[Principal, Message] | None = getattr(self, "_audit_who", None)
        if known is None or known[0] is not who:
            known = self._audit_who = (who, {
                "principal": list(who.chain),
                "user": who.user,
                "agent": who.agent,
                "verified": who.verified,
                "purpose": who.purpose,
                "grant_id": who.grant_id,
            })
        record: Message = {
            **known[1],
            "session": self.id,
            "upstream": entry.upstream,
            "tool": entry.name,
            "exposed": entry.exposed,
            "args_sha256": args_hash(args),
            "decision": verdict.decision,
            "policy_ids": list(verdict.policy_ids),
            "rule_ids": list(verdict.rule_ids),
            "reason": verdict.reason,
            "approver": verdict.approver,
        }
        if verdict.approval_channel is not None:
            record["approval"] = {
                "channel": verdict.approval_channel,
                "answer": verdict.approval_answer,
                "wait_s": None if verdict.approval_wait is None else round(verdict.approval_wait, 3),
                "id": verdict.approval_id,
            }
        if note:
            record["note"] = note
        if entry.pin in ("new", "changed"):
            record["pin"] = entry.pin
        record.update(telemetry.audit_ids())
        if self.ctx.config.audit.include_args:
            record["args"] = args
        try:
            audit.append(record)
        except AuditError as exc:
            log.error("audit write failed: %s", exc)
            raise _AuditRefusal(f"mcp-guard refused {entry.qualified}: the audit log cannot be written") from None

    def _track(self, host_id: Any, upstream: Upstream, upstream_id: int) -> None:
        self._upstream_ids[host_id] = (upstream, upstream_id)

    # ------------------------------------------------------------------ resources, prompts, completion, logging

    def _ready(self, capability: str) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.status == "ready" and capability in u.capabilities]

    async def _aggregate(self, method: str, key: str, capability: str, message: Message) -> list[tuple[Upstream, Message]]:
        items: list[tuple[Upstream, Message]] = []
        for up in self._ready(capability):
            cursor: str | None = None
            for _ in range(1000):
                try:
                    page = await up.request(method, {"cursor": cursor} if cursor else None)
                except (RpcError, UpstreamError) as exc:
                    log.warning("%s from %s failed: %s", method, up.name, exc)
                    break
                items.extend((up, it) for it in page.get(key) or [] if isinstance(it, dict))
                cursor = page.get("nextCursor")
                if not cursor:
                    break
        return items

    async def _resources_list(self, message: Message) -> Message:
        items = await self._aggregate("resources/list", "resources", "resources", message)
        for up, it in items:
            if isinstance(it.get("uri"), str):
                self._resource_owner[it["uri"]] = up
        return result(message["id"], {"resources": [it for _, it in items]})

    async def _resource_templates_list(self, message: Message) -> Message:
        items = await self._aggregate("resources/templates/list", "resourceTemplates", "resources", message)
        return result(message["id"], {"resourceTemplates": [it for _, it in items]})

    async def _by_uri(self, message: Message) -> Message:
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        uri = params.get("uri")
        owner = self._resource_owner.get(uri) if isinstance(uri, str) else None
        candidates = [owner] if owner is not None else self._ready("resources")
        if not candidates:
            raise RpcError(INVALID_PARAMS, f"Resource not found: {uri}")
        last: Message | None = None
        for up in candidates:
            last = await self._forward_to(up, message)
            if "error" not in last:
                if isinstance(uri, str):
                    self._resource_owner[uri] = up
                return last
        assert last is not None
        return last

    async def _prompts_list(self, message: Message) -> Message:
        items = await self._aggregate("prompts/list", "prompts", "prompts", message)
        prompts = []
        for up, it in items:
            name = it.get("name")
            if not isinstance(name, str):
                continue
            exposed = up.config.exposed(name)
            self._prompt_owner[exposed] = (up, name)
            prompts.append({**it, "name": exposed})
        return result(message["id"], {"prompts": prompts})

    async def _prompt_target(self, exposed: Any) -> tuple[Upstream, str]:
        if not self._prompt_owner:
            await self._prompts_list({"id": None})
        target = self._prompt_owner.get(exposed) if isinstance(exposed, str) else None
        if target is None:
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: {exposed}")
        return target

    async def _prompts_get(self, message: Message) -> Message:
        params = dict(message.get("params") or {})
        up, name = await self._prompt_target(params.get("name"))
        params["name"] = name
        return await self._forward_to(up, {**message, "params": params})

    async def _complete(self, message: Message) -> Message:
        params = dict(message.get("params") or {})
        ref = params.get("ref") if isinstance(params.get("ref"), dict) else {}
        assert isinstance(ref, dict)
        if ref.get("type") == "ref/prompt":
            up, name = await self._prompt_target(ref.get("name"))
            params["ref"] = {**ref, "name": name}
            return await self._forward_to(up, {**message, "params": params})
        uri = ref.get("uri")
        owner = self._resource_owner.get(uri) if isinstance(uri, str) else None
        candidates = [owner] if owner is not None else self._ready("completions")
        if not candidates:
            return result(message["id"], {"completion": {"values": [], "hasMore": False}})
        return await self._forward_to(candidates[0], message)

    async def _set_level(self, message: Message) -> Message:
        for up in self._ready("logging"):
            with contextlib.suppress(RpcError, UpstreamError):
                await up.request("logging/setLevel", message.get("params"))
        return result(message["id"], {})

    async def _forward_other(self, message: Message) -> Message:
        """A method the guard does not know: forwarded when exactly one upstream could own it."""
        ready = [u for u in self.upstreams.values() if u.status == "ready"]
        if len(ready) != 1:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {message.get('method')}")
        return await self._forward_to(ready[0], message)

    async def _forward_to(self, up: Upstream, message: Message) -> Message:
        rid = message.get("id")
        params = message.get("params")
        params = strip_meta(params, drop_reserved=True) if isinstance(params, dict) else params
        response = await up.call(str(message["method"]), params, on_id=lambda uid: self._track(rid, up, uid))
        response["id"] = rid
        return response

    # ------------------------------------------------------------------ upstream side (UpstreamHandler)

    async def upstream_request(self, upstream: Upstream, message: Message) -> None:
        method = message.get("method")
        rid = message["id"]
        if method == "roots/list":
            roots = upstream.config.roots
            if isinstance(roots, tuple):
                await upstream.respond(result(rid, {"roots": [{"uri": "file://" + p, "name": p.rsplit("/", 1)[-1] or p} for p in roots]}))
                return
            if roots == "none":
                await upstream.respond(result(rid, {"roots": []}))
                return
        if self.era == "modern":
            if not await self._relay.offer(upstream, message):
                await upstream.refuse(rid, f"mcp-guard cannot relay {method} to this host outside a tool call")
            return
        capability = RELAYED_KIND.get(str(method))
        if capability is None or capability not in self.client_capabilities:
            await upstream.refuse(rid, f"mcp-guard cannot relay {method} to this host")
            return
        response = await self.request_host(str(method), message.get("params"))
        response["id"] = rid
        await upstream.respond(response)

    async def request_host(self, method: str, params: Message | None, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """Send a request to the host and wait for its whole answer message."""
        self._host_ids += 1
        hid = self._host_ids
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._host_pending[hid] = _HostRequest(fut)
        msg = request(hid, method, params)
        try:
            if self.era == "legacy" and not self._host_initialized.is_set():
                await asyncio.wait_for(self._host_initialized.wait(), timeout)
            await self.send(msg)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            await self.send(notification("notifications/cancelled", {"requestId": hid, "reason": "timed out"}))
            return error(hid, INTERNAL_ERROR, f"the host did not answer {method} in time")
        finally:
            self._host_pending.pop(hid, None)

    async def upstream_notification(self, upstream: Upstream, message: Message) -> None:
        method = message.get("method")
        if method == "notifications/tools/list_changed":
            # refreshing needs the upstream's read loop, which is the caller: never wait on it here
            task = asyncio.get_running_loop().create_task(self._refresh_tools(upstream))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        if method == "notifications/cancelled":
            params = message.get("params") if isinstance(message.get("params"), dict) else {}
            assert isinstance(params, dict)
            # the upstream cancels a request it sent us; our host-facing ids are our own
            pending = self._host_pending.get(params.get("requestId"))  # type: ignore[arg-type]
            if pending is not None:
                pending.future.cancel()
            return
        if self.era == "modern" and method == "notifications/message":
            return  # 2026-07-28: log notifications only for requests that opted in
        await self.send(message)

    async def _refresh_tools(self, upstream: Upstream) -> None:
        try:
            await upstream.refresh_tools()
        except (RpcError, UpstreamError) as exc:
            log.warning("refreshing the tools of %s failed: %s", upstream.name, exc)
            return
        await self.upstream_changed(upstream)

    async def upstream_changed(self, upstream: Upstream) -> None:
        if self._started is None or not self._started.done():
            return  # the first build happens once every upstream has had its first try
        await self._tools_changed()

    async def policies_changed(self) -> None:
        """After a policy reload: tell the host if what it may see changed."""
        before = self._visible_cache[1] if self._visible_cache is not None else None
        after = self.visible_tools()
        if before is not None and [e.exposed for e in before] != [e.exposed for e in after] and self.era == "legacy":
            await self.send(notification("notifications/tools/list_changed"))

    async def _tools_changed(self) -> None:
        before = [e.definition for e in self.visible_tools()]
        self._rebuild_catalogue()
        after = [e.definition for e in self.visible_tools()]
        if before != after and self.era == "legacy":
            await self.send(notification("notifications/tools/list_changed"))

    # ------------------------------------------------------------------ shutdown

    async def drain(self, grace: float) -> None:
        """The host closed its input: let requests already received finish, for at most ``grace`` s."""
        pending = [t for t in self._inflight.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace)

    async def close(self) -> None:
        self._relay.close()
        for task in list(self._inflight.values()):
            task.cancel()
        if self.hub is None:  # a hub's sessions share its upstreams; only the hub stops them
            await asyncio.gather(*(up.close() for up in self.upstreams.values()), return_exceptions=True)


class _AuditRefusal(RpcError):
    def __init__(self, message: str) -> None:
        super().__init__(INTERNAL_ERROR, message)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"mcp-guard:{offset}".encode()).decode()


def _decode_cursor(cursor: Any) -> int:
    try:
        text = base64.urlsafe_b64decode(str(cursor).encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix == "mcp-guard" and number.isdigit():
            return int(number)
    except (ValueError, UnicodeDecodeError):
        pass
    raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor")
