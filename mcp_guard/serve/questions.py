"""Answers to a caller's questions that land on another replica, routed to the one that asked.

An upstream's question (sampling, elicitation, roots) is put to the caller on one of its streams,
held by one replica; behind a balancer without stickiness the caller's answer, a POST of its own,
may land on any replica.  Before the question goes out, the asking replica records under the
session id and the question id which replica it is (a Redis key living as long as a question
may wait).  A replica that gets an answer it did not ask for takes that key (get and delete: one
answer per question) and forwards the answer on the asking replica's own channel, with a digest
of the caller binding; the asking replica checks again that it holds the session, that the
binding is the session's and that the question is still open, hands the answer to the session
and sends back its verdict.  An answer for a question no replica asked of this session is refused
as on one replica.  Fail closed: when Redis cannot be reached a question is not put (the upstream
gets an error at once), an answer that cannot be forwarded is refused with 503, and a replica that
loses its subscription fails every question still waiting (fanout.py ``on_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from mcp_guard.jsonrpc import Message
from mcp_guard.serve.fanout import Fanout, FanoutError
from mcp_guard.serve.session_records import binding_digest

log = logging.getLogger("mcp_guard.http")

PREFIX = "mcp-guard:question:"
QUESTION_TTL = 3600.0  # the longest a question waits for its answer (the key goes with the answer before that)
FORWARD_SECONDS = 5.0  # how long a replica waits for the asking replica's verdict on a forwarded answer
MAX_TAKING = 256  # forwarded answers handled at once; past it one is refused (a flood never queues without end)

Accept = Callable[[str, str, Message], Awaitable[str | None]]
"""(session id, binding digest, answer) -> None when taken, else why it is refused."""


def question_key(sid: str, qid: Any) -> str:
    return PREFIX + sid + ":" + orjson.dumps(qid).decode()


class Questions:
    """One replica's side of routing answers: register what it asks, forward what it did not ask,
    take what another replica forwards to it."""

    def __init__(self, fanout: Fanout, accept: Accept) -> None:
        self.fanout = fanout
        self.accept = accept
        self._taking = 0

    async def asked(self, sid: str, qid: Any) -> str | None:
        """Record that this replica asks ``qid`` of session ``sid``: None, or why it cannot be asked."""
        if not self.fanout.subscribed.is_set():
            return "the replicas' channel (Redis) is unreachable: an answer landing on another replica could not reach this one"
        try:
            await self.fanout.mark(question_key(sid, qid), self.fanout.replica, QUESTION_TTL)
        except FanoutError as exc:
            return f"{exc}: an answer landing on another replica could not reach this one"
        return None

    def settled(self, sid: str, qid: Any) -> None:
        """``qid`` was answered here or can no longer be: no other replica forwards an answer to it."""
        self.fanout.unmark(question_key(sid, qid))

    async def forward(self, sid: str, binding: str, answer: Message) -> tuple[int, str | None]:
        """Hand an answer this replica did not ask for to the one that did: (HTTP status, refusal)."""
        try:
            replica = await self.fanout.take(question_key(sid, answer.get("id")))
        except FanoutError as exc:
            return 503, f"{exc}: this answer cannot reach the replica that asked the question"
        if replica is None:
            return 400, "no question of this session has this id"
        verdict = await self.fanout.ask(replica, {"event": "answer", "session": sid, "binding": binding_digest(binding),
                                                  "message": answer}, FORWARD_SECONDS)
        if verdict.get("ok") is True:
            return 202, None
        status = verdict.get("status")
        return (status if status in (400, 503) else 400), str(verdict.get("reason") or "the answer was refused")

    def received(self, event: Mapping[str, Any]) -> None:
        """A forwarded answer on this replica's channel: taken (bounded), and the verdict sent back."""
        sid, binding, answer = event.get("session"), event.get("binding"), event.get("message")
        if not (isinstance(sid, str) and isinstance(binding, str) and isinstance(answer, dict) and "method" not in answer):
            return  # not one of ours: nothing to answer
        if self._taking >= MAX_TAKING:
            self.fanout.reply(event, {"ok": False, "status": 503, "reason": "the replica that asked is too busy"})
            return
        self._taking += 1
        task = asyncio.get_running_loop().create_task(self._take(sid, binding, answer, event))
        task.add_done_callback(lambda _: self._done())

    def _done(self) -> None:
        self._taking -= 1

    async def _take(self, sid: str, binding: str, answer: Message, event: Mapping[str, Any]) -> None:
        reason: str | None = "the replica that asked failed to take the answer"
        with contextlib.suppress(Exception):
            reason = await self.accept(sid, binding, answer)
        if reason is not None:
            log.info("refused an answer forwarded for session %s: %s", sid[:8], reason)
        self.fanout.reply(event, {"ok": reason is None, "status": 400, "reason": reason})


__all__ = ["FORWARD_SECONDS", "PREFIX", "QUESTION_TTL", "Questions", "question_key"]
