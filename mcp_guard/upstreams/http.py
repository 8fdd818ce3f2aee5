"""A Streamable HTTP upstream, spoken as raw JSON-RPC over pooled HTTP/1.1 (``http1.py``).

Messages stay the guard's plain dicts end to end: one ``orjson`` encode per message out, one
decode per message in, no model validation.  Both protocol eras:

* handshake era (``initialize``): the ``Mcp-Session-Id`` the upstream mints is sent on every
  later request with ``MCP-Protocol-Version: <negotiated>``; a standalone ``GET`` stream carries
  what the upstream sends on its own (list changes, requests); a 404 on the session ends the
  channel, so the connection supervisor initializes a new one; the session is ended with
  ``DELETE`` on close.
* 2026-07-28 (``server/discover``, per-request ``_meta``): every POST carries
  ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name``; cancelling a request closes its POST.

An answer is JSON or an SSE stream; a stream may carry notifications and server-to-client
requests before the response, and the response on a request's stream answers that request
whatever id it names.  The guard's answers to the upstream's requests go back as POSTs.  Anything
the upstream gets wrong (status, content type, malformed JSON or SSE, a body over the limit, a
stream that ends unanswered) answers the request with a one-sentence error; an upstream that
cannot be connected to ends the channel (and so is restarted with backoff).

The upstream's credential comes from guard.yaml: static ``headers``, or the guard's own OAuth
client (``auth:``, see ``oauth.py``), whose ``httpx2.Auth`` flow runs on an httpx2 link.  The
host's own token is never passed through.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from mcp.shared.inbound import (
    NAME_BEARING_METHODS,
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)

from mcp_guard.config import UpstreamConfig, upstream_proxied
from mcp_guard.errors import UpstreamError
from mcp_guard.jsonrpc import INTERNAL_ERROR, META_PROTOCOL_VERSION, MODERN, Message, error, is_response
from mcp_guard.upstreams.http1 import Exchange, Http1Link, Link, LinkError, Quick
from mcp_guard.upstreams.httpx_link import HttpxLink
from mcp_guard.upstreams.oauth import GuardProvider, build_auth, http_client
from mcp_guard.upstreams.sse import HEADER_SAFE, SseError, sse_events
from mcp_guard.upstreams.stdio import LINE_LIMIT as MESSAGE_LIMIT

log = logging.getLogger("mcp_guard.upstream")

POST_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SESSION_ID = re.compile(r"[\x21-\x7e]{1,1024}")
GET_RETRY = 1.0  # seconds before the standalone stream is opened again
GET_FAILURES = 2  # consecutive failures to open it before giving up (as the SDK transport)
RESUME_DELAY = 1.0  # seconds before a closed stream is resumed when the upstream sent no ``retry``
RESUME_DELAY_MAX = 10.0  # a larger ``retry`` is cut to this
RESUME_ATTEMPTS = 3  # reconnections in a row that bring nothing new before the request fails
RESUME_TOTAL = 20  # reconnections of one request's stream in all


class SseCursor:
    """Where a stream can be resumed from: the last event id seen and the upstream's ``retry`` (seconds)."""

    __slots__ = ("last_id", "retry")

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry: float | None = None

    def delay(self) -> float:
        return min(self.retry, RESUME_DELAY_MAX) if self.retry is not None else RESUME_DELAY


class HttpChannel:
    def __init__(self, config: UpstreamConfig) -> None:
        assert config.url is not None
        self.config = config
        self.name = config.name
        self.url = config.url
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._link: Link | None = None
        self._auth: GuardProvider | None = None
        self._session: str | None = None
        self._version: str | None = None  # MCP-Protocol-Version after initialize
        self._posts: dict[Any, asyncio.Task[None] | Quick] = {}  # our requests' POSTs in flight, by id
        self._param_maps: dict[str, dict[tuple[str, ...], str]] = {}  # tool -> argument path -> Mcp-Param-* token
        self.excluded: dict[str, str] = {}  # tool -> why it was left out of the listing (an invalid x-mcp-header)
        self._get: asyncio.Task[None] | None = None
        self._reason = "was never started"
        self._ended = False
        self._answered: Callable[[Message], bool] | None = None  # hands an answer to the call waiting for it
        self._parked = False  # ``receive`` waits on an empty inbox
        self._session_headers: tuple[str | None, str | None, dict[str, str]] | None = None  # a handshake-era POST's headers

    def answer_with(self, answer: Callable[[Message], bool]) -> None:
        """``answer(message)`` takes a response as it arrives (True: it was one, and is handled) while
        ``receive`` waits with nothing queued: an answer then skips the hop through the reader task."""
        self._answered = answer

    # ------------------------------------------------------------------ Channel

    async def open(self) -> None:
        self._auth = build_auth(self.config)  # may raise UpstreamError (an unreadable token key)
        if self._auth is not None or upstream_proxied(self.url):
            self._link = HttpxLink(http_client(self.config, self._auth), self.url)
        else:
            self._link = Http1Link(self.url, self.config.headers)
        self._reason = "closed the connection"

    async def send(self, message: Message) -> None:
        link = self._link
        if link is None or self._ended:
            raise UpstreamError(f"upstream {self.name} is not connected")
        method = message.get("method")
        params = message.get("params")
        modern = isinstance(params, dict) and isinstance(params.get("_meta"), dict) and params["_meta"].get(META_PROTOCOL_VERSION) == MODERN
        if method == "notifications/cancelled":
            target = self._posts.get(params.get("requestId")) if isinstance(params, dict) else None
            if modern or self._version == MODERN or (self._session is None and self._version is None):
                if target is not None:
                    target.cancel()  # 2026-07-28: closing the request's stream is its cancellation
                return
            await self._post_quietly(link, message, self._headers(message, None, modern=False))
            if target is not None:
                target.cancel()
            return
        body = orjson.dumps(message)  # JSONEncodeError reaches the caller (a refusal, not a dead channel)
        headers = self._headers(message, method, modern=modern)
        if method is not None and message.get("id") is not None:
            if method == "initialize":
                self._session = self._version = None
            rid = message["id"]
            if method != "initialize" and isinstance(link, Http1Link):  # no task while the answer is a small JSON one
                quick = link.post_now(headers, body, MESSAGE_LIMIT, functools.partial(self._whole, rid, method),
                                      functools.partial(self._read_on, link, rid, method, headers, body))
                if quick is not None:
                    self._posts[rid] = quick
                    return
            self._run(rid, self._request(link, rid, method, headers, body))
            return
        await self._post_quietly(link, message, headers, body)
        if method == "notifications/initialized" and self._session is not None and self._get is None:
            self._get = asyncio.get_running_loop().create_task(self._standalone(link))

    async def receive(self) -> Message | None:
        inbox = self._inbox
        if not inbox.empty():
            return inbox.get_nowait()
        self._parked = True
        try:
            return await inbox.get()
        finally:
            self._parked = False

    def exit_reason(self) -> str:
        if self._auth is not None and self._auth.failure:
            return str(self._auth.failure)
        return self._reason

    async def close(self) -> None:
        link, self._link = self._link, None
        self._end("was stopped")
        tasks = [t for t in (*self._posts.values(), self._get) if t is not None]
        for t in tasks:
            t.cancel()
        if link is None:
            return
        if self._session is not None:
            headers = {"Mcp-Session-Id": self._session, **({"MCP-Protocol-Version": self._version} if self._version else {})}
            with contextlib.suppress(Exception):
                answer = await asyncio.wait_for(link.request("DELETE", headers, None), 5.0)
                await answer.aclose()
        with contextlib.suppress(Exception):
            await link.aclose()

    # ------------------------------------------------------------------ exchanges

    def _headers(self, message: Message, method: Any, *, modern: bool) -> dict[str, str]:
        """A POST's headers (the caller must not change them: a handshake-era session's are made once)."""
        if not modern:
            kept = self._session_headers
            if kept is None or kept[0] != self._session or kept[1] != self._version:
                headers = dict(POST_HEADERS)
                if self._session is not None:
                    headers["Mcp-Session-Id"] = self._session
                if self._version is not None:
                    headers["MCP-Protocol-Version"] = self._version
                kept = self._session_headers = (self._session, self._version, headers)
            return kept[2]
        headers = {**POST_HEADERS, "MCP-Protocol-Version": MODERN}
        if isinstance(method, str):
            headers["Mcp-Method"] = method
            key = NAME_BEARING_METHODS.get(method)
            value = message["params"].get(key) if key else None
            if isinstance(value, str):
                headers["Mcp-Name"] = encode_header_value(value)
                if method == "tools/call" and (params_map := self._param_maps.get(value)):
                    arguments = message["params"].get("arguments")
                    headers.update(mcp_param_headers(params_map, arguments if isinstance(arguments, dict) else {}))
        return headers

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self._reason = reason
            self._inbox.put_nowait(None)

    def _fail(self, rid: Any, text: str) -> None:
        log.warning("[%s] %s", self.name, text)
        self._inbox.put_nowait(error(rid, INTERNAL_ERROR, f"upstream {self.name} {text}"))

    async def _post_quietly(self, link: Link, message: Message, headers: dict[str, str], body: bytes | None = None) -> None:
        """A notification or an answer to the upstream's request: 202 expected, nothing to wait for."""
        try:
            answer = await asyncio.wait_for(link.request("POST", headers, body or orjson.dumps(message)), self.config.timeout)
        except LinkError as exc:
            if exc.connect:
                self._end(f"is unreachable at {self.url}: it {exc}")
            raise UpstreamError(f"upstream {self.name} could not be sent a message: it {exc}") from None
        except TimeoutError:
            raise UpstreamError(f"upstream {self.name} did not take a message within {self.config.timeout:g}s") from None
        try:
            if answer.status >= 400:
                log.warning("[%s] answered HTTP %d to %s", self.name, answer.status, message.get("method") or "an answer")
                if answer.status == 404 and self._session is not None:
                    self._end("ended its session (HTTP 404)")
        finally:
            await answer.aclose()

    def _run(self, rid: Any, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._posts[rid] = task
        task.add_done_callback(lambda t: self._posts.pop(rid, None) if self._posts.get(rid) is t else None)

    def _whole(self, rid: Any, method: str, data: bytes) -> None:
        """A sent-at-once POST's whole JSON answer (``Http1Link.post_now``)."""
        self._posts.pop(rid, None)
        self._json_answer(data, rid, method)

    def _read_on(self, link: Link, rid: Any, method: str, headers: dict[str, str], body: bytes, quick: Quick) -> None:
        """A sent-at-once POST whose answer is not a small JSON one: read the general way, in a task."""
        self._run(rid, self._request(link, rid, method, headers, body, quick))

    async def _request(self, link: Link, rid: Any, method: str, headers: dict[str, str], body: bytes,
                       quick: Quick | None = None) -> None:
        try:
            answer = quick.exchange() if quick is not None else None
            if answer is None:  # the connection of a sent-at-once POST closed before answering: sent again
                answer = await link.request("POST", headers, body)
        except LinkError as exc:
            if exc.connect:
                self._end(f"is unreachable at {self.url}: it {exc}")
            else:
                self._fail(rid, str(exc) if str(exc).startswith("failed") else f"failed: it {exc}")
            return
        except UpstreamError as exc:  # the auth flow's refusals
            self._end(str(exc))
            return
        except Exception as exc:  # request edge: any other failure fails this request, never the channel
            self._fail(rid, f"failed ({type(exc).__name__}: {exc})")
            return
        try:
            await self._answer(link, answer, rid, method, modern="Mcp-Method" in headers)
        except LinkError as exc:
            self._fail(rid, f"failed: it {exc}")
        except SseError as exc:
            self._fail(rid, f"failed: it {exc}")
        finally:
            await answer.aclose()

    async def _answer(self, link: Link, answer: Exchange, rid: Any, method: str, *, modern: bool) -> None:
        status = answer.status
        ctype = answer.headers.get("content-type", "").lower()
        if status >= 300 or status == 202:
            if status == 404 and self._session is not None and method != "initialize":
                self._fail(rid, "ended its session (HTTP 404); it is initialized again")
                self._end("ended its session (HTTP 404)")
                return
            if ctype.startswith("application/json") and status >= 400:
                with contextlib.suppress(LinkError, orjson.JSONDecodeError):
                    sent = orjson.loads(await answer.read(MESSAGE_LIMIT))
                    if isinstance(sent, dict) and isinstance(sent.get("error"), dict):
                        self._inbox.put_nowait({"jsonrpc": "2.0", "id": rid, "error": sent["error"]})
                        return
            where = answer.headers.get("location")
            self._fail(rid, f"answered {method} with HTTP {status}" + (f" (a redirect to {where}, not followed)" if where else ""))
            return
        if method == "initialize":
            sid = answer.headers.get("mcp-session-id")
            if sid is not None and not SESSION_ID.fullmatch(sid):
                self._fail(rid, "sent an Mcp-Session-Id that is not visible ASCII")
                return
            self._session = sid
        if ctype.startswith("application/json"):
            self._json_answer(await answer.read(MESSAGE_LIMIT), rid, method)
        elif ctype.startswith("text/event-stream"):
            cursor = SseCursor()
            if not await self._events(answer, rid, method, cursor):
                await self._resume(link, rid, method, cursor, modern=modern)
        else:
            self._fail(rid, f"answered {method} with content type {ctype or '(none)'}, not JSON or an event stream")

    def _json_answer(self, data: bytes, rid: Any, method: str) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._fail(rid, f"answered {method} with a body that is not JSON")
            return
        if not isinstance(message, dict) or not is_response(message):
            self._fail(rid, f"answered {method} with JSON that is not a JSON-RPC response")
            return
        self._deliver_answer(message, rid, method)

    def _deliver_answer(self, message: Message, rid: Any, method: str) -> None:
        message["id"] = rid  # the answer on a request's own POST is that request's, whatever id it names
        if method == "tools/list" and isinstance(message.get("result"), dict) and isinstance(message["result"].get("tools"), list):
            message["result"]["tools"] = self._headed_tools(message["result"]["tools"])
        if method == "initialize" and isinstance(message.get("result"), dict):
            version = message["result"].get("protocolVersion")
            if isinstance(version, str) and HEADER_SAFE.fullmatch(version):
                self._version = version
        if self._answered is not None and self._parked and self._inbox.empty():  # nothing before it: straight to its call
            try:
                if self._answered(message):
                    return
            except Exception:  # protocol edge: one bad answer must not end the upstream's reader
                log.exception("[%s] handling a message failed", self.name)
                return
        self._inbox.put_nowait(message)

    def _headed_tools(self, tools: list[Any]) -> list[Any]:
        """The listed tools minus those whose ``x-mcp-header`` annotations are invalid (a client must not call
        them); the others' annotations are kept, to mirror their arguments into ``Mcp-Param-*`` headers."""
        kept = []
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str):
                kept.append(tool)
                continue
            reason = find_invalid_x_mcp_header(tool.get("inputSchema"))
            if reason is not None:
                log.warning("[%s] tool %s left out: its x-mcp-header annotation is invalid (%s)", self.name, name, reason)
                self.excluded[name] = reason
                self._param_maps.pop(name, None)
                continue
            self.excluded.pop(name, None)
            header_map = x_mcp_header_map(tool.get("inputSchema"))
            if header_map:
                self._param_maps[name] = header_map
            kept.append(tool)
        return kept

    async def _events(self, answer: Exchange, rid: Any, method: str, cursor: SseCursor | None = None) -> bool:
        """Relay a stream's messages; True once the response to ``rid`` arrived (None: the standalone stream)."""
        async for _kind, data in sse_events(answer.chunks(), MESSAGE_LIMIT, cursor):
            if _kind != "message" or not data:
                continue  # a priming event, or a type MCP does not use
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                message = None
            if not isinstance(message, dict):
                if rid is None:
                    log.warning("[%s] sent an event that is not a JSON-RPC message; ignored", self.name)
                    continue
                self._fail(rid, f"sent an event that is not a JSON-RPC message while answering {method}")
                return True
            if is_response(message):
                if rid is None:
                    log.warning("[%s] sent a response on its standalone stream; ignored", self.name)
                    continue
                self._deliver_answer(message, rid, method)
                return True
            self._inbox.put_nowait(message)  # a notification or a request, before the answer
        return False

    def _get_headers(self, cursor: SseCursor) -> dict[str, str]:
        headers = {**self._headers({}, None, modern=False), "Accept": "text/event-stream"}
        del headers["Content-Type"]
        if cursor.last_id is not None:
            headers["Last-Event-ID"] = cursor.last_id
        return headers

    async def _resume(self, link: Link, rid: Any, method: str, cursor: SseCursor, *, modern: bool) -> None:
        """A request's stream closed before its answer: after the upstream's ``retry``, ``GET`` with
        ``Last-Event-ID`` continues it, a bounded number of times; otherwise the request fails."""
        if cursor.last_id is None or modern:
            self._fail(rid, f"closed the event stream of {method} without answering it")
            return
        idle = total = 0
        while idle < RESUME_ATTEMPTS and total < RESUME_TOTAL and not self._ended:
            idle += 1
            total += 1
            await asyncio.sleep(cursor.delay())
            seen = cursor.last_id
            try:
                answer = await link.request("GET", self._get_headers(cursor), None)
            except UpstreamError as exc:
                log.info("[%s] resuming the stream of %s: %s", self.name, method, exc)
                continue
            try:
                if answer.status == 404 and self._session is not None:
                    self._fail(rid, "ended its session (HTTP 404); it is initialized again")
                    self._end("ended its session (HTTP 404)")
                    return
                if 300 <= answer.status < 400:
                    where = answer.headers.get("location")
                    self._fail(rid, f"answered the resumption of {method}'s event stream with a redirect"
                                    f"{f' to {where}' if where else ''}, which is not followed")
                    return
                if answer.status != 200 or not answer.headers.get("content-type", "").lower().startswith("text/event-stream"):
                    self._fail(rid, f"closed the event stream of {method} without answering it and refused to resume it"
                                    f" (HTTP {answer.status})")
                    return
                if await self._events(answer, rid, method, cursor):
                    return
            except (LinkError, SseError) as exc:
                log.info("[%s] resuming the stream of %s: %s", self.name, method, exc)
            finally:
                await answer.aclose()
            if cursor.last_id != seen:
                idle = 0  # it moved on: the count of fruitless attempts starts again
        self._fail(rid, f"closed the event stream of {method} without answering it, and {total} attempts to resume it"
                        " brought no answer")

    async def _standalone(self, link: Link) -> None:
        """The handshake era's ``GET`` stream: what the upstream sends on its own (list changes, requests)."""
        failures = 0
        cursor = SseCursor()
        while not self._ended and failures < GET_FAILURES:
            try:
                answer = await link.request("GET", self._get_headers(cursor), None)
                try:
                    if answer.status == 404 and self._session is not None:
                        self._end("ended its session (HTTP 404)")
                        return
                    if answer.status != 200 or not answer.headers.get("content-type", "").lower().startswith("text/event-stream"):
                        return  # 405: the upstream offers no standalone stream
                    failures = 0
                    await self._events(answer, None, "GET", cursor)
                finally:
                    await answer.aclose()
            except (UpstreamError, SseError) as exc:
                failures += 1
                log.info("[%s] standalone stream: %s", self.name, exc)
            await asyncio.sleep(cursor.delay() if cursor.retry is not None else GET_RETRY)
