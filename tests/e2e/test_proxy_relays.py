"""Transparency of the stdio proxy: what is not a tool call passes the guard both ways.

Against ``@modelcontextprotocol/server-everything`` (npm): sampling and elicitation (server->client
requests answered by the host's callbacks), progress, logging, resources, prompts, completion and
roots reach the host and come back. Server->client requests exist only in the handshake era; on
2026-07-28 the guard offers upstreams no sampling/elicitation, so server-everything does not even
register the tools that would need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from fixtures import (
    MODES,
    Mode,
    guarded_session,
    requires_tools,
    stdio_upstream,
    tool_path,
    write_guard_config,
)
from helpers_proxy import text
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-everything")]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_guard_config(
        tmp_path, {"everything": stdio_upstream([str(tool_path("mcp-server-everything"))], roots="pass")}
    )


class Host:
    """The host's side of the server->client features, recording what it was asked."""

    def __init__(self) -> None:
        self.sampling: list[t.CreateMessageRequestParams] = []
        self.elicitations: list[Any] = []
        self.roots_asked = 0
        self.logs: list[t.LoggingMessageNotificationParams] = []
        self.logged = anyio.Event()

    async def on_sampling(self, context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
        self.sampling.append(params)
        return t.CreateMessageResult(role="assistant", model="fake-llm", content=t.TextContent(type="text", text="42"),
                                     stop_reason="endTurn")

    async def on_elicit(self, context: Any, params: Any) -> t.ElicitResult:
        self.elicitations.append(params)
        return t.ElicitResult(action="decline")

    async def on_roots(self, context: Any) -> t.ListRootsResult:
        self.roots_asked += 1
        return t.ListRootsResult(roots=[t.Root(uri=FileUrl("file:///srv/host-root"), name="host-root")])

    async def on_log(self, params: t.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)
        if "level" in str(params.data).lower():  # the simulated ones, not the roots-updated notice
            self.logged.set()

    def callbacks(self) -> dict[str, Any]:
        return {"sampling_callback": self.on_sampling, "elicitation_callback": self.on_elicit,
                "list_roots_callback": self.on_roots, "logging_callback": self.on_log}


async def test_server_to_client_requests_are_relayed_legacy(config: Path) -> None:
    host = Host()
    async with guarded_session(config, mode="legacy", **host.callbacks()) as c:
        names = {tool.name for tool in (await c.list_tools()).tools}
        # the host's capabilities reached the upstream: it registered its capability-gated tools
        assert {"everything_trigger-sampling-request", "everything_trigger-elicitation-request",
                "everything_get-roots-list"} <= names

        sampled = await c.call_tool("everything_trigger-sampling-request", {"prompt": "6x7?", "maxTokens": 5})
        assert not sampled.is_error
        assert '"text": "42"' in text(sampled) and "fake-llm" in text(sampled)
        assert len(host.sampling) == 1
        first = host.sampling[0].messages[0].content
        assert isinstance(first, t.TextContent) and first.text.endswith("6x7?")

        elicited = await c.call_tool("everything_trigger-elicitation-request", {})
        assert not elicited.is_error and "declined" in text(elicited)
        assert len(host.elicitations) == 1

        roots = await c.call_tool("everything_get-roots-list", {})
        assert "file:///srv/host-root" in text(roots)
        assert host.roots_asked >= 1

        await c.set_logging_level("debug")
        toggled = await c.call_tool("everything_toggle-simulated-logging", {})
        assert "Started simulated" in text(toggled)
        with anyio.fail_after(15):
            await host.logged.wait()
        assert any(str(log.data).startswith(f"{log.level.capitalize()}") for log in host.logs), host.logs
        await c.call_tool("everything_toggle-simulated-logging", {})


@pytest.mark.parametrize("mode", MODES)
async def test_progress_resources_prompts_completion(mode: Mode, config: Path) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with guarded_session(config, mode=mode) as c:
        done = await c.call_tool("everything_trigger-long-running-operation", {"duration": 1, "steps": 3},
                                 progress_callback=on_progress)
        assert not done.is_error and "completed" in text(done)
        assert seen == [(1, 3), (2, 3), (3, 3)]

        resources = (await c.list_resources()).resources
        uris = [str(r.uri) for r in resources]
        assert any(u.startswith("demo://resource/static/document/") for u in uris), uris
        static = next(u for u in uris if u.startswith("demo://resource/static/document/"))
        content = (await c.read_resource(static)).contents[0]
        assert isinstance(content, t.TextResourceContents) and content.text
        dynamic = (await c.read_resource("demo://resource/dynamic/text/1")).contents[0]
        assert isinstance(dynamic, t.TextResourceContents) and "Resource 1" in dynamic.text
        templates = (await c.list_resource_templates()).resource_templates
        assert any("demo://resource/dynamic/text/" in tpl.uri_template for tpl in templates)

        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert {"everything_simple-prompt", "everything_args-prompt", "everything_completable-prompt"} <= prompts
        got = await c.get_prompt("everything_args-prompt", {"city": "Paris"})
        first = got.messages[0].content
        assert isinstance(first, t.TextContent) and "Paris" in first.text

        completion = await c.complete(
            t.PromptReference(type="ref/prompt", name="everything_completable-prompt"),
            {"name": "department", "value": "Eng"},
        )
        assert completion.completion.values == ["Engineering"]


async def test_server_to_client_requests_become_input_required_on_2026_07_28(config: Path) -> None:
    """A 2026-07-28 host has no back channel: the upstream's mid-call questions reach it as
    ``input_required`` results (which the SDK client answers through the same callbacks) and the
    answers go back to the still-waiting upstream call."""
    host = Host()
    async with guarded_session(config, mode="auto", **host.callbacks()) as c:
        assert c.protocol_version == "2026-07-28"
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert {"everything_trigger-sampling-request", "everything_trigger-elicitation-request",
                "everything_get-roots-list"} <= names
        sampled = await c.call_tool("everything_trigger-sampling-request", {"prompt": "6x7?", "maxTokens": 5})
        assert not sampled.is_error and '"text": "42"' in text(sampled)
        assert len(host.sampling) == 1
        elicited = await c.call_tool("everything_trigger-elicitation-request", {})
        assert not elicited.is_error and "declined" in text(elicited)
        assert len(host.elicitations) == 1
        roots = await c.call_tool("everything_get-roots-list", {})
        assert "file:///srv/host-root" in text(roots)
        echoed = await c.call_tool("everything_echo", {"message": "modern"})
        assert "modern" in text(echoed)


async def test_a_relay_request_state_is_single_use_and_bound_to_its_call(config: Path) -> None:
    host = Host()
    args = {"prompt": "a", "maxTokens": 5}
    async with guarded_session(config, mode="auto", **host.callbacks()) as c:
        first = await c.session.call_tool("everything_trigger-sampling-request", args, allow_input_required=True)
        assert isinstance(first, t.InputRequiredResult) and first.request_state is not None
        state = first.request_state
        answer = {key: {"role": "assistant", "model": "m", "content": {"type": "text", "text": "x"}}
                  for key in first.input_requests}
        with pytest.raises(MCPError) as moved:  # bound to these arguments: not to others
            await c.session.call_tool("everything_trigger-sampling-request", {**args, "prompt": "b"},
                                      input_responses=answer, request_state=state, allow_input_required=True)
        assert moved.value.error.code == -32602
        done = await c.session.call_tool("everything_trigger-sampling-request", args,
                                         input_responses=answer, request_state=state, allow_input_required=True)
        assert isinstance(done, t.CallToolResult) and not done.is_error and '"model": "m"' in text(done)
        with pytest.raises(MCPError) as replayed:  # single use
            await c.session.call_tool("everything_trigger-sampling-request", args,
                                      input_responses=answer, request_state=state, allow_input_required=True)
        assert replayed.value.error.code == -32602
