"""Hot reload through a real guard: a changed policy file takes effect without a restart, the host is
told the list changed, and a broken edit keeps the last good policies (and says why in the log)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from fixtures import (
    RecordFile,
    guarded_session,
    recording_server_command,
    requires_tools,
    stdio_upstream,
    tool_path,
    write_guard_config,
    write_policies,
)
from mcp.shared.exceptions import MCPError

from mcp_guard.app import settle_heap
from mcp_guard.config import load_config
from mcp_guard.policy import PolicySet
from mcp_guard.proxy.context import GuardContext
from mcp_guard.proxy.reload import load_policy_set, reload_policies, resettle_heap, watch_policies

pytestmark = pytest.mark.e2e

ECHO_ONLY = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo"]}]}]
ECHO_AND_READ = [{"id": "p", "rules": [{"effect": "allow", "tools": ["rec/echo", "rec/read_note"]}]}]


async def _until(predicate: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


async def test_reload_swaps_policies_and_keeps_last_good_on_error(tmp_path: Path) -> None:
    record = RecordFile(tmp_path / "rec.jsonl")
    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command(), env=record.env())}, ECHO_ONLY)
    changed = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    log = tmp_path / "guard.log"
    async with guarded_session(config, stderr=log, message_handler=on_message) as client:

        async def names() -> list[str]:
            return sorted(t.name for t in (await client.list_tools()).tools)

        assert await names() == ["rec_echo"]
        write_policies(tmp_path / "policies", ECHO_AND_READ)

        async def widened() -> bool:
            return await names() == ["rec_echo", "rec_read_note"]

        await _until(widened)
        await asyncio.wait_for(changed.wait(), 10)
        await client.call_tool("rec_read_note", {"path": "x"})
        assert record.tools_called() == ["read_note"]  # allowed now, so it reached the upstream

        # a broken edit: the last good set stays in force and the log says why, file:line:col
        (tmp_path / "policies" / "test.yaml").write_text("version: 1\npolicies:\n  - id: p\n    rules:\n      - effect: alow\n        tools: [rec/echo]\n")

        async def logged() -> bool:
            return "alow" in log.read_text()

        await _until(logged)
        assert await names() == ["rec_echo", "rec_read_note"]
        assert "test.yaml:5:" in log.read_text()


STATIC = "demo://resource/static/document/"
SHOWN_DOC, LATER_HIDDEN_DOC = STATIC + "architecture.md", STATIC + "features.md"


def _everything_policy(*, prompts: list[str], docs: list[str], tools: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"id": "p", "rules": [
        {"effect": "allow", "tools": tools or ["everything/echo"]},
        {"effect": "allow", "prompts": [f"everything/{p}" for p in prompts]},
        {"effect": "allow", "resources": ["everything/*"], "when": {"uri": {"in": docs}}},
    ]}]


@requires_tools("mcp-server-everything")
async def test_a_reload_rechecks_prompts_and_resources(tmp_path: Path) -> None:
    """A reload that hides a prompt and a resource tells the host both lists changed, and the hidden
    ones answer like names that do not exist; a reload that touches only tools does not."""
    wide = _everything_policy(prompts=["simple-prompt", "args-prompt"], docs=[SHOWN_DOC, LATER_HIDDEN_DOC])
    config = write_guard_config(tmp_path, {"everything": stdio_upstream([str(tool_path("mcp-server-everything"))])}, wide)
    got: list[str] = []

    async def on_message(message: object) -> None:
        if isinstance(message, types.PromptListChangedNotification
                      | types.ResourceListChangedNotification | types.ToolListChangedNotification):
            got.append(type(message).__name__)

    async with guarded_session(config, message_handler=on_message) as client:
        s = client.session

        async def prompts() -> list[str]:
            return sorted(p.name for p in (await s.list_prompts()).prompts)

        async def docs() -> list[str]:
            return sorted(str(r.uri) for r in (await s.list_resources()).resources)

        assert await prompts() == ["everything_args-prompt", "everything_simple-prompt"]
        assert await docs() == [SHOWN_DOC, LATER_HIDDEN_DOC]
        assert (await s.read_resource(LATER_HIDDEN_DOC)).contents
        assert (await s.get_prompt("everything_args-prompt", {"city": "Oslo"})).messages
        assert (await s.list_tools()).tools  # the guard tells of a tool change only once the host has listed

        # tools only: the prompt and resource lists stay as they were, nobody is told they changed
        write_policies(tmp_path / "policies", _everything_policy(prompts=["simple-prompt", "args-prompt"],
                                                                 docs=[SHOWN_DOC, LATER_HIDDEN_DOC],
                                                                 tools=["everything/echo", "everything/get-sum"]))
        await _until(lambda: _true("ToolListChangedNotification" in got))
        await asyncio.sleep(1.5)
        assert "PromptListChangedNotification" not in got and "ResourceListChangedNotification" not in got

        write_policies(tmp_path / "policies", _everything_policy(prompts=["simple-prompt"], docs=[SHOWN_DOC]))
        await _until(lambda: _true({"PromptListChangedNotification", "ResourceListChangedNotification"} <= set(got)))
        assert await prompts() == ["everything_simple-prompt"]
        assert await docs() == [SHOWN_DOC]
        with pytest.raises(MCPError) as hidden_prompt:
            await s.get_prompt("everything_args-prompt", {"city": "Oslo"})
        assert hidden_prompt.value.error.message == "Unknown prompt: everything_args-prompt"
        with pytest.raises(MCPError) as hidden_doc:
            await s.read_resource(LATER_HIDDEN_DOC)
        assert hidden_doc.value.error.message == f"Resource not found: {LATER_HIDDEN_DOC}"
        assert (await s.read_resource(SHOWN_DOC)).contents  # what stays allowed still works


async def _true(value: bool) -> bool:
    return value


async def test_after_a_reload_in_a_settled_heap_the_replaced_policy_set_is_collected(tmp_path: Path) -> None:
    """``serve`` freezes its start-up heap; a reload must not leave the policy set it replaced
    frozen (never collected) there.  A run of policy edits would otherwise grow the guard for ever."""
    config = load_config(write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command())}, ECHO_ONLY))
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=None)  # type: ignore[arg-type]
    old = weakref.ref(ctx.policies)
    heard: list[bool] = []

    async def changed(previous: PolicySet) -> None:
        heard.append(previous is old())  # told which set was replaced, without keeping it

    # start-up garbage in a reference cycle (a frame, a traceback) that still points at the set:
    # frozen with the rest, only the cycle collector could ever free it
    cycle: list[object] = [ctx.policies]
    cycle.append(cycle)
    wake = asyncio.Event()
    settle_heap()  # what serve does once it has started
    del cycle
    watcher = asyncio.create_task(watch_policies(ctx, changed, wake))
    try:
        write_policies(tmp_path / "policies", ECHO_AND_READ, name="test")
        wake.set()
        await _until(lambda: _true(bool(heard)))
        await _until(lambda: _true(old() is None), within=5)
        assert heard == [True] and gc.get_freeze_count() > 0  # and the heap is settled again
    finally:
        watcher.cancel()
        gc.unfreeze()


async def test_run_settles_its_heap_before_serving_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mcp-guard run`` freezes its start-up heap as serve does (so a reload resettles it, as above),
    and its exit after the host's EOF skips a full collection of that heap, which every test and
    host closing a guard used to wait out."""
    import mcp_guard.app as app
    import mcp_guard.transports.stdio as stdio

    config = load_config(write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command())}, ECHO_ONLY))
    frozen: list[int] = []

    class Host:
        async def open(self) -> None: ...

    async def context(*_: Any) -> Any:
        return type("Ctx", (), {})()

    async def serve(*_: Any) -> None:
        frozen.append(gc.get_freeze_count())

    monkeypatch.setattr(stdio, "StdioHost", Host)
    monkeypatch.setattr(app, "build_context", context)
    monkeypatch.setattr(app, "run_host", serve)
    thresholds = gc.get_threshold()
    try:
        await app.run_stdio(config)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert len(frozen) == 1 and frozen[0] > 0


async def test_without_a_settled_heap_a_reload_leaves_the_collector_alone(tmp_path: Path) -> None:
    config = load_config(write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command())}, ECHO_ONLY))
    ctx = GuardContext(config=config, policies=load_policy_set(config), store=None)  # type: ignore[arg-type]
    assert gc.get_freeze_count() == 0
    resettle_heap()
    assert gc.get_freeze_count() == 0  # a guard in a test's process froze nothing: nothing is frozen behind its back
    assert reload_policies(ctx) == []
