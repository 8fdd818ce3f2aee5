"""What ties one ``serve`` replica's sessions to the others sharing its Redis (``ReplicaLink``, a
part of ``HttpGuard``): answers to questions this replica did not ask are forwarded to the one that
did (questions.py), notices for a ``GET`` stream another replica holds travel there (fanout.py),
and what a caller changed about its session (log level, subscriptions: session_state.py) is kept
in the session's shared record and replayed by every replica serving the session."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from mcp_guard.jsonrpc import INVALID_REQUEST, Message, error
from mcp_guard.serve.questions import Questions
from mcp_guard.serve.reply_host import STREAM_NOTICES
from mcp_guard.serve.session_records import binding_digest
from mcp_guard.serve.session_state import REPLAY, SESSION_STATE, changed, replays

if TYPE_CHECKING:
    from mcp_guard.serve.fanout import Fanout
    from mcp_guard.serve.resource import Caller
    from mcp_guard.serve.session_records import SessionRecords
    from mcp_guard.serve.streams import EventStream, Stream
    from mcp_guard.serve.table import SessionEntry, Sessions

log = logging.getLogger("mcp_guard.http")


class ReplicaLink:
    """``HttpGuard``'s replica side; inert unless the state store is shared (``records``) and, for
    what travels between replicas, Redis (``fanout``)."""

    entries: dict[str, SessionEntry]
    records: SessionRecords | None
    fanout: Fanout | None
    guard: Sessions
    questions: Questions | None
    _tasks: set[asyncio.Future[None]]

    async def _ask(self, entry: SessionEntry, message: Message, sse: bool, eager: bool,
                   headers: dict[str, str]) -> Response | EventStream:
        raise NotImplementedError  # HttpGuard's: hand a request to the session

    def _link_start(self) -> None:
        """At start, with Redis: route answers, and hear what the other replicas send."""
        if self.fanout is not None:
            self.questions = Questions(self.fanout, self._answer_here)
            self.fanout.on_lost = self._channel_lost

    def _wire(self, entry: SessionEntry) -> None:
        """A handshake-era session opened or adopted here: its questions, and notices for a GET
        stream held elsewhere, go through the replicas' channels."""
        if self.questions is not None and entry.key.startswith("sid:"):
            sid = entry.key[4:]
            entry.host.share = functools.partial(self.questions.asked, sid)
            entry.host.settle = functools.partial(self.questions.settled, sid)
            entry.host.elsewhere = functools.partial(self._notice_elsewhere, sid)

    def _replica_event(self, event: Mapping[str, Any]) -> None:
        """An event from the replicas' channels that is not the approval page's."""
        kind, sid = event.get("event"), event.get("session")
        if kind == "answer" and self.questions is not None:
            self.questions.received(event)
        elif kind == "state" and isinstance(sid, str) and self.fanout is not None and event.get("replica") != self.fanout.replica \
                and f"sid:{sid}" in self.entries:
            self._later(self._state_elsewhere(sid))
        elif kind == "notice" and isinstance(event.get("message"), dict):
            entry = self.entries.get(f"sid:{sid}")
            message = event["message"]
            if entry is not None and entry.host.listener is not None and message.get("method") in STREAM_NOTICES:
                entry.host.listener.put({"jsonrpc": "2.0", "method": message["method"], "params": message.get("params", {})})

    # ------------------------------------------------------------------ answers

    async def _forward_answer(self, entry: SessionEntry, sid: str | None, caller: Caller, message: Message) -> Response | None:
        """A POSTed answer to no question asked here: taken by the replica that asked (None), or refused (audited)."""
        status, reason = (400, "no question of this session has this id") if self.questions is None or not sid \
            else await self.questions.forward(sid, caller.binding, message)
        if reason is None:
            return None
        self.guard.refused(caller.principal, None, f"mcp-guard refused an answer: {reason}", entry.session.key)
        return JSONResponse(error(message.get("id"), INVALID_REQUEST, f"Invalid Request: {reason}"), status_code=status,
                            headers={"Retry-After": "1"} if status == 503 else {})

    async def _answer_here(self, sid: str, binding: str, answer: Message) -> str | None:
        """An answer another replica forwarded: taken if this replica holds the session, the binding
        is the session's and the question is still open here; else why not."""
        entry = self.entries.get(f"sid:{sid}")
        if entry is None:
            return "the replica that asked no longer holds this session"
        if binding_digest(entry.binding) != binding:
            return "this session belongs to another caller"
        if not entry.host.answered(answer):
            return "no question of this session has this id"
        await entry.session.handle(answer)
        return None

    def _channel_lost(self) -> None:
        """The replicas' channel broke: answers landing elsewhere cannot reach this replica, so the
        questions waiting for them fail now rather than wait for an answer that cannot come."""
        reason = "the replicas' channel (Redis) was lost: the caller's answer could not reach this replica"
        for entry in list(self.entries.values()):
            if entry.host.share is not None:
                self._later(entry.host.fail_questions(reason))

    def _notice_elsewhere(self, sid: str, message: Message) -> None:
        """A notice for session ``sid``'s GET stream, which this replica does not hold: to every replica."""
        if self.fanout is not None:
            self.fanout.publish({"event": "notice", "session": sid, "message": message})

    # ------------------------------------------------------------------ session state

    def _watch_state(self, entry: SessionEntry, message: Message, stream: Stream) -> None:
        """Record what ``message`` changes about the session once it is answered (shared records only)."""
        if self.records is not None and message.get("method") in SESSION_STATE and not str(message.get("id")).startswith(REPLAY):
            stream.answer.add_done_callback(functools.partial(self._state_answered, entry, message))

    async def _replay(self, entry: SessionEntry, want: Message) -> None:
        """Bring ``entry``'s guard session to the recorded state (log level, subscriptions)."""
        for message in replays(entry.state, want):
            await self._ask(entry, message, False, False, {})
        entry.state = dict(want)

    def _state_answered(self, entry: SessionEntry, request: Message, answer: asyncio.Future[Message]) -> None:
        if answer.cancelled() or not entry.key.startswith("sid:") or entry.initialize is None:
            return
        new = changed(entry.state, request, answer.result())
        if new is not None:
            entry.state = new
            self._later(self._share_state(entry, entry.key[4:]))

    async def _share_state(self, entry: SessionEntry, sid: str) -> None:
        assert self.records is not None and entry.initialize is not None
        await self.records.save(sid, entry.binding, entry.initialize, entry.state)
        if self.fanout is not None:
            self.fanout.publish({"event": "state", "session": sid, "replica": self.fanout.replica})

    async def _state_elsewhere(self, sid: str) -> None:
        """Another replica changed session ``sid``'s state: replay what changed into the one held here."""
        entry = self.entries.get(f"sid:{sid}")
        record = await self.records.load(sid) if entry is not None and self.records is not None else None
        if entry is not None and record is not None and self.records is not None and self.records.matches(record, entry.binding):
            await self._replay(entry, record.get("state") or {})

    def _later(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = ["ReplicaLink"]
