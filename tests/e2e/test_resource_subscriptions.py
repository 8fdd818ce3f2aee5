"""2026-07-28 resource subscriptions through ``mcp-guard run``: ``subscriptions/listen`` with
``resourceSubscriptions`` against server-everything (its ``toggle-subscriber-updates`` tool makes
it announce an update of every subscribed resource at once and then every 5 seconds).

A listen gets updates for the URIs it subscribed and the guard acknowledged, and for nothing
else; a URI the session may not see is never acknowledged or subscribed upstream, and once a
policy reload hides a subscribed resource its updates stop reaching the host.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures import requires_tools, stdio_upstream, tool_path, write_guard_config, write_policies
from helpers_proxy import RawGuard, raw_guard
from test_modern_host_channels import SUBSCRIPTION_ID, discover, listen, meta

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-everything")]

STATIC = "demo://resource/static/document/"
A, B, HIDDEN = STATIC + "architecture.md", STATIC + "features.md", STATIC + "extension.md"
GUARDED = STATIC + "instructions.md"  # visible, but each read needs a person's approval
UPDATED = "notifications/resources/updated"
LIST_CHANGED = "notifications/resources/list_changed"
PERIOD = 5.0  # server-everything's update interval
SETTLE = 1.0  # how long the rest of one batch of updates may trail its first


def policy(docs: list[str]) -> list[dict[str, Any]]:
    return [{"id": "p", "rules": [
        {"effect": "allow", "tools": ["everything/toggle-subscriber-updates"]},
        {"effect": "allow", "resources": ["everything/*"], "when": {"uri": {"in": docs}}},
        {"effect": "approve", "resources": ["everything/*"], "when": {"uri": {"equals": GUARDED}}},
    ]}]


async def collect(guard: RawGuard, seconds: float, until: Callable[[list[dict[str, Any]]], bool] | None = None,
                  settle: float = SETTLE) -> list[dict[str, Any]]:
    """Every message the guard writes for ``seconds`` (plus what already waited in ``others``); with
    ``until``, only until what arrived satisfies it and ``settle`` seconds more (the rest of that
    batch), instead of waiting out the whole window."""
    got = list(guard.others)
    guard.others.clear()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if until is not None and until(got):
            deadline, until = min(deadline, loop.time() + settle), None
            continue
        try:
            got.append(await guard.recv(left))
        except TimeoutError:
            break
    return got


def updates(messages: list[dict[str, Any]]) -> set[tuple[Any, str]]:
    """(subscription id, uri) of every resource update; an update outside a listen has id None."""
    return {(m["params"].get("_meta", {}).get(SUBSCRIPTION_ID), m["params"]["uri"]) for m in messages if m.get("method") == UPDATED}


async def test_updates_reach_only_the_listens_that_subscribed_and_never_for_hidden_resources(tmp_path: Path) -> None:
    config = write_guard_config(tmp_path, {"everything": stdio_upstream([str(tool_path("mcp-server-everything"))])},
                                policy([A, B]), audit={"path": str(tmp_path / "audit.jsonl")})
    async with raw_guard(config) as guard:
        await discover(guard)
        listed = await guard.request("resources/list", {"_meta": meta()})
        assert {r["uri"] for r in listed["result"]["resources"]} >= {A, B, GUARDED}
        assert HIDDEN not in {r["uri"] for r in listed["result"]["resources"]}
        first = await listen(guard, "a", {"resourceSubscriptions": [A, HIDDEN, GUARDED]})
        # the honoured subset: the hidden URI is left out, as one that does not exist would be, and so
        # is one whose reads need an approval (no standing watch on it)
        assert first["params"] == {"_meta": {SUBSCRIPTION_ID: "a"}, "notifications": {"resourceSubscriptions": [A]}}
        second = await listen(guard, "b", {"resourcesListChanged": True, "resourceSubscriptions": [B, A]})
        assert second["params"]["notifications"] == {"resourcesListChanged": True, "resourceSubscriptions": [B, A]}
        toggled = await guard.request("tools/call", {"name": "everything_toggle-subscriber-updates", "arguments": {},
                                                     "_meta": meta()})
        assert "Started" in toggled["result"]["content"][0]["text"], toggled
        # the first batch comes at once: each listen its own URIs; none for HIDDEN, none outside a listen
        seen = updates(await collect(guard, PERIOD + 1.5, until=lambda got: updates(got) >= {("a", A), ("b", B), ("b", A)}))
        assert seen == {("a", A), ("b", B), ("b", A)}

        # a reload hides B: its updates stop, though the upstream still sends them (every update
        # after the list change is judged by the new policy: the guard writes in order)
        write_policies(tmp_path / "policies", policy([A]))
        changed = await collect(guard, 10.0, until=lambda got: any(m.get("method") == LIST_CHANGED for m in got), settle=0)
        assert any(m.get("method") == LIST_CHANGED for m in changed), changed
        seen = updates(await collect(guard, PERIOD + 1.5, until=lambda got: updates(got) >= {("a", A), ("b", A)}))
        assert seen == {("a", A), ("b", A)}

        # listens end: nothing more arrives (the upstream is unsubscribed once no listen holds a URI)
        for rid in ("a", "b"):
            await guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}})
        assert updates(await collect(guard, PERIOD + 1.5)) == set()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r.get("decision") == "unknown" and HIDDEN in json.dumps(r) for r in audit)  # the hidden ask is on record
    assert any(r.get("decision") == "approval_required" and GUARDED in json.dumps(r) for r in audit)


async def test_resource_subscriptions_must_be_a_list_of_uris(tmp_path: Path) -> None:
    config = write_guard_config(tmp_path, {"everything": stdio_upstream([str(tool_path("mcp-server-everything"))])},
                                policy([A]))
    async with raw_guard(config) as guard:
        await discover(guard)
        for bad in ("demo://x", [A, 7], {"uri": A}):
            refused = await guard.request("subscriptions/listen", {"notifications": {"resourceSubscriptions": bad},
                                                                   "_meta": meta()})
            assert refused["error"]["code"] == -32602, refused
