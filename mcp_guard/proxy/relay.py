"""Upstream input requests (sampling, elicitation, roots) for a 2026-07-28 host.

A 2026-07-28 host cannot be sent requests: the protocol's multi round-trip pattern has the server
answer ``tools/call`` with ``resultType: "input_required"`` instead, and the host retries the call
with ``inputResponses`` and the opaque ``requestState``.  A handshake-era upstream, though, asks
mid-call with a request of its own.  The guard bridges the two: while a host's call is in flight,
an upstream request is *parked* — the upstream call keeps waiting — and the host gets an
``input_required`` result whose ``requestState`` names the parked call.  The retry delivers the
answers to the upstream and waits again, for the result or the next question.

``requestState`` is a random 128-bit handle, single use, kept only in this process and bound to
the principal, the tool and the arguments' hash of the call that parked it: it cannot be forged,
replayed, or moved to another call.  The policy decision was made (and audited) when the call was
first forwarded; a retry is the same call, so it is not decided or counted again.

The upstream keeps the ``progressToken`` of the first request, but each retry is a new host request
with a token of its own: the upstream's progress for a relayed call is re-addressed to the token of
the request the host is waiting on now, and dropped while the call is parked (no host request is
open for it then) or when the retry asked for no progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    SERVER_TO_CLIENT,
    Message,
    error,
    result,
    tool_error,
)

if TYPE_CHECKING:
    from mcp_guard.upstreams.connection import Upstream

log = logging.getLogger("mcp_guard.relay")

STATE_PREFIX = "mcp-guard-relay."
PARK_SECONDS = 600.0  # a host that never retries: the upstream call is cancelled after this
KIND = SERVER_TO_CLIENT
MAX_ROUNDS = 8  # a 2026-07-28 upstream that keeps asking for input: the request fails after this many rounds


@dataclass
class _Call:
    """One host call forwarded to an upstream, possibly waiting for the host's input."""

    upstream: Upstream
    task: asyncio.Task[Message]
    binding: tuple[str, str, str]  # principal chain, qualified tool, arguments hash
    capabilities: Message  # what the host declared on the request that is waiting now
    questions: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    asked: dict[str, Message] = field(default_factory=dict)  # inputRequests key -> upstream request
    expiry: asyncio.TimerHandle | None = None
    token: Any = None  # the progressToken the upstream was given (the first request's)
    host_token: Any = None  # the token of the host request waiting now (None: none, or parked)
    upstream_ids: list[int] = field(default_factory=list)  # the forwarded request's id at the upstream


def progress_token(params: Message) -> Any:
    """The request's ``_meta.progressToken`` if it is a usable key (a string or a number), else None."""
    meta = params.get("_meta")
    return _token(meta.get("progressToken") if isinstance(meta, dict) else None)


def _token(token: Any) -> Any:
    return token if isinstance(token, (str, int, float)) and not isinstance(token, bool) else None


class Relay:
    def __init__(self) -> None:
        self._running: dict[str, list[_Call]] = {}  # upstream name -> calls in flight
        self._parked: dict[str, _Call] = {}  # requestState -> call waiting for the host
        self._tokens: dict[tuple[str, Any], _Call] = {}  # (upstream, token it was given) -> its call

    @staticmethod
    def is_resume(params: Message) -> bool:
        state = params.get("requestState")
        return isinstance(state, str) and state.startswith(STATE_PREFIX)

    async def start(self, upstream: Upstream, call: asyncio.Task[Message], binding: tuple[str, str, str], capabilities: Message,
                    rid: Any, params: Message, upstream_ids: list[int]) -> Message:
        """Wait for the forwarded call: its result, or an ``input_required`` for the first question."""
        token = progress_token(params)
        entry = _Call(upstream, call, binding, capabilities, token=token, host_token=token, upstream_ids=upstream_ids)
        if token is not None:
            self._tokens[(upstream.name, token)] = entry
        self._running.setdefault(upstream.name, []).append(entry)
        return await self._wait(entry, rid)

    def progress(self, upstream: Upstream, params: Message) -> Message | None:
        """An upstream's progress notification params, re-addressed to the host request waiting for
        its call now; None when no host request is waiting for it (parked, or no token asked)."""
        token = _token(params.get("progressToken"))
        entry = self._tokens.get((upstream.name, token)) if token is not None else None
        if entry is None:
            return params  # not a relayed call's: as it came
        if entry.host_token is None:
            return None
        return {**params, "progressToken": entry.host_token}

    async def resume(self, params: Message, binding: tuple[str, str, str], capabilities: Message, rid: Any,
                     track: Callable[[Upstream, int], None] | None = None) -> Message:
        """A host's retry: hand its answers to the upstream, then wait again.  ``track`` learns where
        the call runs (so the retry can be cancelled, and its log opt-in finds the upstream)."""
        state = str(params.get("requestState"))
        entry = self._parked.get(state)
        if entry is None or entry.binding != binding:  # a foreign attempt leaves the real one intact
            return error(rid, INVALID_PARAMS, "Invalid params: unknown, used or foreign requestState")
        del self._parked[state]
        if entry.expiry is not None:
            entry.expiry.cancel()
        entry.capabilities = capabilities
        entry.host_token = progress_token(params)
        if track is not None and entry.upstream_ids:
            track(entry.upstream, entry.upstream_ids[0])
        responses = params.get("inputResponses") if isinstance(params.get("inputResponses"), dict) else {}
        assert isinstance(responses, dict)
        for key, question in entry.asked.items():
            answer = responses.get(key)
            if isinstance(answer, dict):
                await entry.upstream.respond(result(question["id"], answer))
            else:
                await entry.upstream.respond(error(question["id"], INTERNAL_ERROR, "the host gave no answer"))
        entry.asked = {}
        self._running.setdefault(entry.upstream.name, []).append(entry)
        return await self._wait(entry, rid)

    async def offer(self, upstream: Upstream, message: Message) -> bool:
        """An upstream request: True if it was taken for a host call waiting on that upstream."""
        calls = [c for c in self._running.get(upstream.name, []) if not c.task.done()]
        kind = KIND.get(str(message.get("method")))
        if len(calls) != 1 or kind is None:
            return False  # nothing (or more than one call) it could belong to: refused by the caller
        if kind not in calls[0].capabilities:
            await upstream.respond(error(message["id"], METHOD_NOT_FOUND, f"the host did not declare {kind}"))
            return True
        calls[0].questions.put_nowait(message)
        return True

    async def _wait(self, entry: _Call, rid: Any) -> Message:
        question = asyncio.ensure_future(entry.questions.get())
        try:
            await asyncio.wait({entry.task, question}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            entry.task.cancel()
            raise
        finally:
            self._running[entry.upstream.name] = [c for c in self._running.get(entry.upstream.name, []) if c is not entry]
        if entry.task.done():
            question.cancel()
            self._forget(entry)
            return self._final(entry, rid)
        first = question.result()
        asked = [first]
        while not entry.questions.empty():
            asked.append(entry.questions.get_nowait())
        entry.asked = {f"upstream.{i}": q for i, q in enumerate(asked, 1)}
        state = STATE_PREFIX + secrets.token_urlsafe(16)
        entry.host_token = None  # answered: no host request waits for this call until the retry
        self._parked[state] = entry
        entry.expiry = asyncio.get_running_loop().call_later(PARK_SECONDS, self._expire, state)
        requests = {key: {"method": q["method"], "params": q.get("params") or {}} for key, q in entry.asked.items()}
        return result(rid, {"resultType": "input_required", "inputRequests": requests, "requestState": state})

    @staticmethod
    def _final(entry: _Call, rid: Any) -> Message:
        try:
            response = entry.task.result()
        except Exception as exc:  # the call's task edge: its failure becomes the host's answer, never a hang
            return result(rid, tool_error(f"mcp-guard could not complete {entry.binding[1]}: {exc}"))
        response["id"] = rid
        return response

    def _forget(self, entry: _Call) -> None:
        if entry.token is not None and self._tokens.get((entry.upstream.name, entry.token)) is entry:
            del self._tokens[(entry.upstream.name, entry.token)]

    def _expire(self, state: str) -> None:
        entry = self._parked.pop(state, None)
        if entry is not None:
            self._forget(entry)
            log.warning("%s waited %.0fs for the host's input; cancelled", entry.binding[1], PARK_SECONDS)
            entry.task.cancel()

    def close(self) -> None:
        for entry in self._parked.values():
            entry.task.cancel()
        self._parked.clear()
        self._tokens.clear()
        with contextlib.suppress(Exception):
            for calls in self._running.values():
                for c in calls:
                    c.task.cancel()


def asks_input(response: Message) -> bool:
    """Whether ``response`` is a 2026-07-28 ``input_required`` answer (``settle`` then asks the host)."""
    out = response.get("result")
    return isinstance(out, dict) and out.get("resultType") == "input_required"


async def settle(call: Callable[[Message], Awaitable[Message]], params: Message,
                 ask: Callable[[str, Message], Awaitable[Message]], first: Message | None = None) -> Message:
    """A 2026-07-28 upstream's ``input_required`` answer, for a handshake-era host that can be asked:
    each of its ``inputRequests`` is put to the host (``ask`` mediates it as an upstream's own request
    is: the capability the host declared, the upstream's flow labels), and the request is sent again
    as a new request with the answers under ``inputResponses`` and ``requestState`` exactly as given
    (left out when none was), until the answer is not ``input_required``.  A question the host does
    not answer fails the request with one sentence; nothing is retried without its answer.
    ``first``: the answer to ``params`` when the caller already sent it."""
    response = await call(params) if first is None else first
    for _ in range(MAX_ROUNDS):
        out = response.get("result")
        if not isinstance(out, dict) or out.get("resultType") != "input_required":
            return response
        requests = out.get("inputRequests")
        if not isinstance(requests, dict) or not requests:
            return error(response.get("id"), INTERNAL_ERROR, "the upstream asked for input without saying which")
        answers: Message = {}
        for key, question in requests.items():
            method = question.get("method") if isinstance(question, dict) else None
            asked = question.get("params") if isinstance(question, dict) else None
            answer = await ask(str(method), asked if isinstance(asked, dict) else {})
            if not isinstance(answer.get("result"), dict):
                why = answer.get("error", {}).get("message") if isinstance(answer.get("error"), dict) else None
                return error(response.get("id"), INTERNAL_ERROR, f"the upstream asked for {method}, which the host did not give: {why}")
            answers[key] = answer["result"]
        again = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
        again["inputResponses"] = answers
        if "requestState" in out:
            again["requestState"] = out["requestState"]
        response = await call(again)
    return error(response.get("id"), INTERNAL_ERROR, f"the upstream asked for input more than {MAX_ROUNDS} times")
