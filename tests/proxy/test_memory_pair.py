"""The in-memory host pair: the same framing and refusals as stdio, without a process or a pipe."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp_guard.jsonrpc import Message
from mcp_guard.transports.memory import memory_pair


async def test_lines_are_parsed_handed_on_and_answers_come_back_in_order() -> None:
    host, peer = memory_pair()
    seen: list[Any] = []

    async def handle(message: Any) -> None:
        seen.append(message)
        await host.send({"jsonrpc": "2.0", "id": message["id"], "result": {}})

    serving = asyncio.create_task(host.serve(handle))
    for rid in (1, "two"):
        await peer.send({"jsonrpc": "2.0", "id": rid, "method": "ping"})
    assert [await peer.receive(), await peer.receive()] == [
        {"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": "two", "result": {}}]
    peer.close()
    await asyncio.wait_for(serving, 5)  # EOF ends serve
    await host.close()
    assert await peer.receive() is None and await peer.receive() is None  # EOF stays EOF
    assert [m["id"] for m in seen] == [1, "two"]


async def test_garbage_is_refused_and_a_failing_handler_never_ends_the_session() -> None:
    host, peer = memory_pair()

    async def handle(message: Any) -> None:
        if message.get("method") == "boom":
            raise RuntimeError("a bug in the guard")
        await host.send({"jsonrpc": "2.0", "id": message.get("id"), "result": {}})

    serving = asyncio.create_task(host.serve(handle))
    await peer.send_line(b"{not json")
    await peer.send_line(b"   ")  # blank: ignored, as on stdio
    await peer.send_line(b"\xff\xfe")
    await peer.send({"jsonrpc": "2.0", "id": 9, "method": "boom"})
    await peer.send({"jsonrpc": "2.0", "id": 10, "method": "ping"})
    answers: list[Message | None] = [await asyncio.wait_for(peer.receive(), 5) for _ in range(4)]
    assert [a["error"]["code"] for a in answers[:3] if a is not None] == [-32700, -32700, -32603]
    assert answers[2] is not None and "Traceback" not in str(answers[2])
    assert answers[3] == {"jsonrpc": "2.0", "id": 10, "result": {}}
    peer.close()
    await asyncio.wait_for(serving, 5)


async def test_a_host_that_hung_up_gets_nothing_more() -> None:
    host, peer = memory_pair()
    assert not host.gone
    waiting = asyncio.create_task(host.hung_up())
    await asyncio.sleep(0)
    assert not waiting.done()
    peer.close(hang_up=True)
    assert host.gone
    await asyncio.wait_for(waiting, 5)  # what ends the guard's drain at once: nobody is left to answer
    await host.send({"jsonrpc": "2.0", "method": "notifications/message"})  # dropped, never blocks
    await host.close()
    assert await peer.receive() is None
