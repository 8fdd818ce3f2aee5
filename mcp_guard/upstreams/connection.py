"""One upstream server as the guard sees it: handshake, tool catalogue, request/response matching,
time-outs, and restart with backoff when it crashes.

The guard speaks the handshake era (2025-11-25 ``initialize``) to upstreams: every reference
server accepts it, and it keeps server->client requests (sampling, elicitation, roots) possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import itertools
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import orjson

from mcp_guard import __version__
from mcp_guard.config import UpstreamConfig
from mcp_guard.errors import RpcError, UpstreamError
from mcp_guard.jsonrpc import (
    INVALID_PARAMS,
    LATEST_LEGACY,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    METHOD_NOT_FOUND,
    MODERN,
    UNSUPPORTED_PROTOCOL_VERSION,
    Era,
    Message,
    error,
    is_notification,
    is_request,
    is_response,
    notification,
    request,
)
from mcp_guard.telemetry import OFF, Hooks
from mcp_guard.upstreams.channel import Channel
from mcp_guard.upstreams.deadlines import Deadlines

log = logging.getLogger("mcp_guard.upstream")

CLIENT_INFO = {"name": "mcp-guard", "version": __version__}
LISTEN_FOREVER = 10.0 * 365 * 86400  # a subscriptions/listen request stays open for the connection's life
MAX_BACKOFF = 30.0
MAX_LIST_PAGES = 1000
_MODERN = Era.MODERN  # read per call: a global (``Era.MODERN`` is an enum metaclass hook on 3.11)


class Status(enum.StrEnum):
    """Where an upstream connection is: never started, starting (or restarting), ready, down
    (failed; restarted with backoff), closed (the guard is stopping)."""

    IDLE = "idle"
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    CLOSED = "closed"


class UpstreamHandler(Protocol):
    async def upstream_request(self, upstream: Upstream, message: Message) -> None: ...
    async def upstream_notification(self, upstream: Upstream, message: Message) -> None: ...
    async def upstream_changed(self, upstream: Upstream) -> None: ...


def open_channel(config: UpstreamConfig) -> Channel:
    if config.url is not None:
        from mcp_guard.upstreams.http import HttpChannel

        return HttpChannel(config)
    from mcp_guard.upstreams.stdio import StdioChannel

    return StdioChannel(config)


class Upstream:
    def __init__(
        self,
        config: UpstreamConfig,
        handler: UpstreamHandler,
        channel_factory: Callable[[UpstreamConfig], Channel] = open_channel,
        *,
        telemetry: Hooks = OFF,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.name = config.name
        self.handler = handler
        self._factory = channel_factory
        self.status = Status.IDLE
        self.last_error = ""
        self.capabilities: Message = {}
        self.server_info: Message = {}
        self.instructions: str | None = None
        self.protocol_version = LATEST_LEGACY
        self.era = Era.LEGACY  # MODERN (2026-07-28) once server/discover succeeded
        self._listen: asyncio.Task[None] | None = None
        self.tools: list[Message] = []
        self.client_capabilities: Message = {}
        self._channel: Channel | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._deadlines = Deadlines()  # when each of them times out
        self._loop: asyncio.AbstractEventLoop | None = None  # found once: on 3.11 each lookup is a getpid(2)
        self._supervisor: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()
        self._closed = False
        self.generation = 0  # bumps on every successful (re)connect

    # ------------------------------------------------------------------ lifecycle

    def excluded(self, exposed: str) -> tuple[str, str] | None:
        """The tool this upstream listed as ``exposed`` but the guard left out, and why (an HTTP
        upstream's tool with an invalid ``x-mcp-header``: a client must not call it); else None."""
        excluded = getattr(self._channel, "excluded", None)
        if isinstance(excluded, Mapping):
            for raw, reason in excluded.items():
                if self.config.exposed(raw) == exposed:
                    return raw, str(reason)
        return None

    @property
    def handshake_timeout(self) -> float:
        """How long one start may take before the upstream counts as hung and is restarted: its
        ``timeout``, and never less than ``startup_timeout`` (npx may download a package first)."""
        return max(self.config.timeout, self.config.startup_timeout)

    async def start(self, client_capabilities: Message) -> None:
        """Connect (once); returns when the first attempt succeeded or failed, or after
        ``startup_timeout`` while it goes on in the background (never raises).  An upstream that
        gets ready later tells the handler (``upstream_changed``), so its tools join then."""
        if self._supervisor is None:
            self.client_capabilities = client_capabilities
            self.status = Status.STARTING
            # a fresh context: restarts and refreshes must not join the trace of the request that started us
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), context=contextvars.Context())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), self.config.startup_timeout)

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping():
            channel = self._factory(self.config)
            reader: asyncio.Task[None] | None = None
            reason = ""
            try:
                await channel.open()
                self._channel = channel
                answer_with = getattr(channel, "answer_with", None)  # a stdio channel answers as lines arrive
                if answer_with is not None:
                    answer_with(self._answer)
                reader = asyncio.get_running_loop().create_task(self._read_loop(channel))
                await asyncio.wait_for(self._handshake(), self.handshake_timeout)
                self.status = Status.READY
                self.generation += 1
                self.last_error = ""
                backoff = 0.5
                self._attempted.set()
                log.info("upstream %s ready (%s, %d tools)", self.name, self.server_info.get("name", "?"), len(self.tools))
                await self._notify_changed()
                await reader
                reason = channel.exit_reason()
            except TimeoutError:
                reason = f"did not finish its handshake within {self.handshake_timeout:g}s"
            except (UpstreamError, RpcError) as exc:
                reason = str(exc)
            except asyncio.CancelledError:
                reason = "was stopped"
                raise
            except Exception as exc:  # never let one upstream take the guard down
                log.exception("upstream %s failed", self.name)
                reason = f"failed ({type(exc).__name__}: {exc})"
            finally:
                self._channel = None
                if reader is not None:
                    reader.cancel()
                if self._listen is not None:
                    self._listen.cancel()
                    self._listen = None
                self._fail_pending(f"upstream {self.name} {reason}" if reason else f"upstream {self.name} is down")
                with contextlib.suppress(Exception):
                    await channel.close()
                if reason and not reason.startswith(f"upstream {self.name}"):
                    reason = f"upstream {self.name} {reason}"
                self.last_error = reason or f"upstream {self.name} is down"
                if not self._stopping():
                    self.status = Status.DOWN
                self._attempted.set()
            if self._stopping():
                break
            await self._notify_changed()
            log.warning("%s; restarting in %.1fs", self.last_error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            self.status = Status.STARTING

    def _stopping(self) -> bool:
        """A method, not the attribute, so type narrowing does not assume it cannot change."""
        return self._closed

    async def _notify_changed(self) -> None:
        try:
            await self.handler.upstream_changed(self)
        except Exception:  # task edge: a failing listener must not stop the upstream's reader
            log.exception("handling a change of upstream %s failed", self.name)

    async def _handshake(self) -> None:
        if self.config.protocol != "legacy" and await self._discover():
            await self.refresh_tools(per_page=self.handshake_timeout)
            if isinstance(self.capabilities.get("tools"), dict) and self.capabilities["tools"].get("listChanged"):
                self._listen = asyncio.get_running_loop().create_task(self._listen_for_changes())
            return
        self.era = Era.LEGACY
        init = await self.request(
            "initialize",
            {
                "protocolVersion": LATEST_LEGACY,
                "capabilities": self.client_capabilities,
                "clientInfo": CLIENT_INFO,
            },
            timeout=self.handshake_timeout,  # a start (npx, imports) may take longer than a call
        )
        self.protocol_version = str(init.get("protocolVersion") or LATEST_LEGACY)
        self.capabilities = init.get("capabilities") or {}
        self.server_info = init.get("serverInfo") or {}
        self.instructions = init.get("instructions")
        await self.notify("notifications/initialized")
        await self.refresh_tools(per_page=self.handshake_timeout)

    async def _discover(self) -> bool:
        """Probe 2026-07-28 with ``server/discover``; False means: use the handshake era."""
        self.era = Era.MODERN  # so the probe itself carries the per-request _meta
        disc: Message | None = None
        for attempt in range(2):
            try:
                disc = await self.request("server/discover", {}, timeout=30.0)
                break
            except RpcError as exc:
                if attempt == 0 and _offers_modern(exc):
                    continue  # "unsupported version" that lists ours: asked once more, as the era says
                self.era = Era.LEGACY
                if self.config.protocol == "modern":
                    raise UpstreamError(f"upstream {self.name} does not speak protocol {MODERN} ({exc.message})") from None
                return False
        assert disc is not None
        versions = disc.get("supportedVersions")
        if not isinstance(versions, list) or MODERN not in versions:
            self.era = Era.LEGACY
            if self.config.protocol == "modern":
                raise UpstreamError(f"upstream {self.name} does not support protocol {MODERN}")
            return False
        self.protocol_version = MODERN
        self.capabilities = disc.get("capabilities") or {}
        meta = disc.get("_meta")
        self.server_info = (meta.get(META_SERVER_INFO) if isinstance(meta, dict) else None) or {}
        self.instructions = disc.get("instructions")
        return True

    async def _listen_for_changes(self) -> None:
        """2026-07-28 delivers list changes only on a ``subscriptions/listen`` stream."""
        with contextlib.suppress(UpstreamError, RpcError, asyncio.CancelledError):
            await self.request("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, timeout=LISTEN_FOREVER)

    def _modern(self, params: Message | None) -> Message:
        """Per-request ``_meta`` of 2026-07-28: what the guard is and can do (nothing, unless the
        caller says what it can relay for this request: a host's tools/call, ``proxy/roundtrip.py``)."""
        out = dict(params) if params else {}
        meta = dict(out.get("_meta") or {})
        meta[META_PROTOCOL_VERSION] = MODERN
        meta.setdefault(META_CLIENT_CAPABILITIES, {})
        meta[META_CLIENT_INFO] = CLIENT_INFO
        out["_meta"] = meta
        return out

    async def refresh_tools(self, *, per_page: float | None = None) -> None:
        """Fetch every page of ``tools/list``; the catalogue is only replaced when all pages arrived."""
        if "tools" not in self.capabilities:
            self.tools = []
            return
        tools: list[Message] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await self.request("tools/list", {"cursor": cursor} if cursor else None, timeout=per_page)
            tools.extend(t for t in page.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("name"), str))
            cursor = page.get("nextCursor")
            if not cursor:
                break
        self.tools = tools

    async def close(self) -> None:
        self._closed = True
        self.status = Status.CLOSED
        channel = self._channel
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor

    # ------------------------------------------------------------------ messages

    async def _read_loop(self, channel: Channel) -> None:
        while (message := await channel.receive()) is not None:
            try:
                if self._answer(message):
                    continue
                if is_request(message):
                    if message.get("method") == "ping":
                        await channel.send({"jsonrpc": "2.0", "id": message["id"], "result": {}})
                    else:
                        asyncio.get_running_loop().create_task(self._guarded(self.handler.upstream_request(self, message)))
                elif is_notification(message):
                    await self.handler.upstream_notification(self, message)
                else:
                    log.warning("[%s] sent a message that is neither request, response nor notification", self.name)
            except Exception:  # task edge: one bad message must not end the upstream's reader
                log.exception("[%s] handling a message failed", self.name)
        # the upstream is gone: fail what waits on it now (a handshake would otherwise sit out its time-out)
        self._fail_pending(f"upstream {self.name} {channel.exit_reason()}")

    def _answer(self, message: Message) -> bool:
        """A response: handed to the request waiting for it (an unknown id is dropped); False for
        any other message."""
        if not is_response(message):
            return False
        fut = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if fut is not None and not fut.done():
            fut.set_result(message)
        return True

    async def _guarded(self, coro: Any) -> None:
        try:
            await coro
        except Exception:  # task edge: a background task has nobody else to report to
            log.exception("[%s] handling a request failed", self.name)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(UpstreamError(reason))

    def call(
        self,
        method: str,
        params: Message | None,
        *,
        timeout: float | None = None,
        on_id: Callable[[int], None] | None = None,
    ) -> Coroutine[Any, Any, Message]:
        """Send a request; return the upstream's whole response message (result or error).

        Raises ``UpstreamError`` when the upstream is down, dies, or does not answer in time
        (then it is also sent ``notifications/cancelled``).  Traced as a CLIENT span when
        telemetry is on (its trace context goes into ``params._meta``); with telemetry off the
        request itself is the coroutine, with no scope (and no frame) around it.
        """
        if self.telemetry is OFF:
            return self._call(method, params, timeout=timeout, on_id=on_id)
        return self._traced_call(method, params, timeout, on_id)

    async def _traced_call(self, method: str, params: Message | None, timeout: float | None,  # noqa: ASYNC109
                           on_id: Callable[[int], None] | None) -> Message:
        with self.telemetry.upstream_call(self, method, params) as traced:
            response = await self._call(method, traced.inject(params), timeout=timeout, on_id=traced.noting(on_id))
            traced.respond(response)
            return response

    async def _call(
        self,
        method: str,
        params: Message | None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        on_id: Callable[[int], None] | None = None,
    ) -> Message:
        channel = self._channel
        if channel is None:
            raise UpstreamError(self.last_error or f"upstream {self.name} is not running")
        request_id = next(self._ids)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()
        self._pending[request_id] = fut
        if on_id is not None:
            on_id(request_id)
        # the deadline fails the answer's own future (``asyncio.wait_for`` would add a second
        # future, a done-callback and a partial per request), on a timer shared by the requests
        self._deadlines.add(loop, request_id, fut, timeout or self.config.timeout)
        try:
            try:
                await channel.send(request(request_id, method, self._modern(params) if self.era == _MODERN else params))
            except orjson.JSONEncodeError as exc:  # e.g. arguments nested deeper than the encoder's 255 levels
                raise RpcError(INVALID_PARAMS, f"Invalid params: mcp-guard cannot forward this {method} ({exc})") from None
            return await fut
        except TimeoutError:
            with contextlib.suppress(Exception):
                await channel.send(notification("notifications/cancelled", {"requestId": request_id, "reason": "timed out"}))
            raise UpstreamError(
                f"upstream {self.name} did not answer {method} within {timeout or self.config.timeout:g}s"
            ) from None
        finally:
            self._deadlines.discard(request_id)
            self._pending.pop(request_id, None)

    async def request(self, method: str, params: Message | None = None, *, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """Like ``call`` but returns the ``result`` and raises ``RpcError`` for an error answer."""
        response = await self.call(method, params, timeout=timeout)
        if "error" in response:
            err = response["error"] if isinstance(response["error"], dict) else {}
            raise RpcError(int(err.get("code", -32603)), str(err.get("message", "error")), err.get("data"))
        result = response.get("result")
        return result if isinstance(result, dict) else {}

    async def notify(self, method: str, params: Message | None = None) -> None:
        channel = self._channel
        if channel is None:
            return
        with contextlib.suppress(UpstreamError):
            await channel.send(notification(method, params))

    async def respond(self, message: Message) -> None:
        """Answer a request the upstream sent (sampling, elicitation, roots)."""
        channel = self._channel
        if channel is not None:
            with contextlib.suppress(UpstreamError):
                await channel.send(message)

    async def refuse(self, request_id: Any, text: str) -> None:
        await self.respond(error(request_id, METHOD_NOT_FOUND, text))


def _offers_modern(exc: RpcError) -> bool:
    """An "unsupported protocol version" refusal (-32022) whose ``data.supported`` lists 2026-07-28."""
    data = exc.data
    return exc.code == UNSUPPORTED_PROTOCOL_VERSION and isinstance(data, dict) and isinstance(data.get("supported"), list) \
        and MODERN in data["supported"]
