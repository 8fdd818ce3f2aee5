"""``remember: session`` in the approver: a remembered approval is a record of the state store, so
another guard (replica) on the same store honours it; only the person's yes writes it, it answers
only the same session, principal, target and arguments, and a store that cannot say asks again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mcp_guard.config import parse_config
from mcp_guard.decision import Outcome, Verdict
from mcp_guard.errors import StateError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era
from mcp_guard.policy import PolicySet
from mcp_guard.proxy.approvals import GuardApprover, make_approver
from mcp_guard.proxy.context import GuardContext
from mcp_guard.request import RequestContext, Target
from mcp_guard.state import StateStore
from mcp_guard.state.memory import MemoryStore

ALICE = Principal(user="alice@example.com", agents=("support-bot",), purpose="ticket-triage", verified=True, grant_id="g-1")
MALLORY = Principal(user="mallory@example.com", agents=("support-bot",), purpose="ticket-triage", verified=True, grant_id="g-2")
ENTRY = Target("fs_write_file", "fs", "write_file", "fs/write_file", {}, None)
ARGS = {"path": "/srv/tickets/42.md", "content": "hello"}
VERDICT = Verdict(Outcome.APPROVAL_REQUIRED, "mcp-guard needs a human to approve fs/write_file", ("tickets",))


def approver(tmp_path: Path, store: StateStore, remember: str = "session") -> GuardApprover:
    """A guard's approver on ``store`` (a replica: each has its own, the store is shared)."""
    cfg = parse_config(f"version: 1\napprovals:\n  timeout: 10s\n  remember: {remember}\n", str(tmp_path / "guard.yaml"),
                       environ={})
    return make_approver(GuardContext(config=cfg, policies=PolicySet.empty(), store=store))


def request(session_key: str, who: Principal = ALICE) -> RequestContext:
    """A tools/call of a host without elicitation (it waits in the queue), in the serve session ``session_key``."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ENTRY.exposed, "arguments": ARGS}}
    return RequestContext("local-" + session_key, who, None, Era.LEGACY, "2025-11-25", message, {}, {},
                          session_key=session_key)


async def ask(guard: GuardApprover, req: RequestContext, answer: bool | None = True,
              args: dict[str, Any] = ARGS) -> tuple[Verdict, int]:
    """The approver's verdict, the person answering ``answer`` in the queue (None: nobody is asked
    in time; the test then fails), and how many requests were queued for the person."""
    store = guard.ctx.store
    before = len(await store.approval_list(pending_only=False))
    task = asyncio.ensure_future(guard.ask(req, ENTRY, args, VERDICT))
    for _ in range(200):
        if task.done():
            break
        pending = await store.approval_list()
        if pending:
            assert answer is not None
            await store.approval_resolve(pending[0]["id"], answer, "cli:alice")
            break
        await asyncio.sleep(0.01)
    verdict = await asyncio.wait_for(task, 10)
    return verdict, len(await store.approval_list(pending_only=False)) - before


async def test_a_yes_remembered_on_one_replica_answers_the_same_call_on_another(tmp_path: Path) -> None:
    store = MemoryStore()
    a, b = approver(tmp_path, store), approver(tmp_path, store)
    first, asked = await ask(a, request("s1"))
    assert first.decision is Outcome.APPROVED and first.approval_channel == "queue" and asked == 1
    again, asked = await ask(b, request("s1"), answer=None)  # the other replica: nobody is asked
    assert again.decision is Outcome.APPROVED and asked == 0
    assert again.approval_channel == "remembered" and again.approver == "cli:alice"
    changed, asked = await ask(b, request("s1"), args={**ARGS, "content": "rm -rf /"})
    assert changed.approval_channel == "queue" and asked == 1  # other arguments ask again


async def test_another_session_or_principal_with_the_same_call_is_asked(tmp_path: Path) -> None:
    store = MemoryStore()
    a, b = approver(tmp_path, store), approver(tmp_path, store)
    assert (await ask(a, request("s1")))[0].decision is Outcome.APPROVED
    # same tool, same arguments (the same memo), but another session of alice's, or mallory in
    # alice's session name: each is asked, and mallory's "no" is not overridden by alice's "yes"
    other_session, asked = await ask(b, request("s2"))
    assert other_session.approval_channel == "queue" and asked == 1
    mallory, asked = await ask(b, request("s1", MALLORY), answer=False)
    assert mallory.decision is Outcome.REJECTED and asked == 1
    # without a serve session key the guard's own session id names the session (``run``), never
    # taken for a serve session of the same name
    local = RequestContext("s1", ALICE, None, Era.LEGACY, "2025-11-25", request("x").message, {}, {})
    assert (await ask(b, local))[1] == 1


async def test_only_a_yes_is_remembered_and_only_with_remember_session(tmp_path: Path) -> None:
    store = MemoryStore()
    guard = approver(tmp_path, store)
    no, _ = await ask(guard, request("s1"), answer=False)
    assert no.decision is Outcome.REJECTED
    assert (await ask(guard, request("s1")))[1] == 1, "a refusal is not remembered"
    plain = approver(tmp_path, store, remember="none")
    assert (await ask(plain, request("s1")))[1] == 1, "remember: none never reads a remembered approval"
    assert (await ask(plain, request("s9")))[1] == 1
    assert (await ask(guard, request("s9")))[1] == 1, "remember: none never wrote one"


class _Unreadable(MemoryStore):
    """A store whose keyed values cannot be read or written (a Redis that went away for them)."""

    async def value_get(self, key: str) -> str | None:
        raise StateError("the state store is unreachable")

    async def value_set(self, key: str, value: str, expires_at: float) -> None:
        raise StateError("the state store is unreachable")


async def test_a_store_that_cannot_say_asks_again(tmp_path: Path) -> None:
    guard = approver(tmp_path, _Unreadable())
    first, asked = await ask(guard, request("s1"))
    assert first.decision is Outcome.APPROVED and asked == 1  # the yes still lets this call through
    again, asked = await ask(guard, request("s1"))
    assert again.approval_channel == "queue" and asked == 1  # never assumed remembered
