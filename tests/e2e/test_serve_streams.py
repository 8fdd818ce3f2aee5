"""``mcp-guard serve`` streams: SSE responses carrying progress, log messages and an upstream's own
questions (sampling, elicitation, roots) to the caller whose request caused them; the ``GET /mcp``
stream with list changes; ``subscriptions/listen`` over HTTP for 2026-07-28 callers.

Real upstreams (the recording server's ``chatty`` tool, ``server-everything``'s sampling and
elicitation tools) through the SDK's Streamable HTTP client in both eras, beside raw HTTP attacks:
an answer posted to another caller's question, another principal's session stream, a second GET
stream, a reader that hangs up mid-call, too many listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from fixtures import (
    Mode,
    RecordFile,
    free_port,
    recording_server_command,
    requires_tools,
    stdio_upstream,
    tool_path,
    write_guard_config,
    write_policies,
)
from fixtures.serving import connect, serving_in_process

from mcp_guard.grants import generate_keypair, issue_grant, public_jwk

pytestmark = [pytest.mark.e2e, requires_tools("mcp-server-everything")]

MODES: list[Mode] = ["legacy", "2026-07-28"]
MODERN = "2026-07-28"
ACCEPT = {"Accept": "application/json, text/event-stream"}


POLICY = [{"id": "all", "rules": [{"effect": "allow", "tools": ["rec/*", "everything/*"]},
                                   {"effect": "allow", "resources": ["everything/*", "watch/*"]}]}]
DOC = "demo://resource/static/document/architecture.md"
WATCHED = "note://shared"  # the recording server's subscribable resource (--watchable)


class Served:
    def __init__(self, tmp: Path, **serve: Any) -> None:
        self.tmp = tmp
        self.key, pub = generate_keypair()
        (tmp / "idp.jwk").write_text(json.dumps(public_jwk(pub)))
        self.record = RecordFile(tmp / "rec.jsonl")
        self.watched = RecordFile(tmp / "watch.jsonl")
        self.config = write_guard_config(
            tmp,
            {"rec": stdio_upstream(recording_server_command("--chatty"), env=self.record.env(), roots="pass"),
             "everything": stdio_upstream([str(tool_path("mcp-server-everything"))]),
             "watch": stdio_upstream(recording_server_command("--watchable"), env=self.watched.env())},
            POLICY,
            trust={"issuers": {"corp-idp": str(tmp / "idp.jwk")}},
            state={"url": f"sqlite:///{tmp / 'state.db'}"},
            audit={"path": str(tmp / "audit.jsonl")},
            **({"serve": serve} if serve else {}),
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def grant(self, user: str, tools: list[str] | None = None) -> str:
        return issue_grant(self.key, "corp-idp", user, "agent", tools or ["rec/*", "everything/*"], resources=["everything/*", "watch/*"])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    with serving_in_process(s.config, s.port):
        yield s


def _events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


# --------------------------------------------------------------------------- SDK client, both eras


@pytest.mark.parametrize("mode", MODES)
async def test_progress_logs_and_roots_reach_the_caller_of_the_call(served: Served, mode: Mode) -> None:
    progress: list[float] = []
    logs: list[tuple[str, Any]] = []
    asked: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append((params.level, params.data))

    async def on_roots(context: Any) -> types.ListRootsResult:
        asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/caller-root")])

    async with connect(served.url, served.grant("alice"), mode, logging_callback=on_log, list_roots_callback=on_roots,
                       log_level="warning") as client:
        if mode == "legacy":
            await client.set_logging_level("warning")
        done = await client.call_tool("rec_chatty", {"ask": True}, progress_callback=on_progress)
    assert not done.is_error and "caller-root" in done.content[0].text  # type: ignore[union-attr]
    assert asked == ["roots"]
    assert [level for level, _ in logs] == ["warning", "error", "error"]  # debug/info below the level asked for
    if mode == "legacy":
        assert progress == [1, 2, 3, 4]
    else:  # the roots question is an input_required round trip: progress follows the retried request
        assert progress[-2:] == [3, 4]


@pytest.mark.parametrize("mode", MODES)
async def test_sampling_and_elicitation_from_the_upstream_are_put_to_the_caller(served: Served, mode: Mode) -> None:
    seen: list[str] = []

    async def on_sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.append("sampling")
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="sampled by the caller"),
                                         model="test-model")

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.append("elicitation")
        return types.ElicitResult(action="accept", content={"name": "Ada", "check": True, "color": "red", "email": "ada@example.com",
                                                            "homepage": "https://example.com", "birthdate": "1815-12-10",
                                                            "integer": 1, "number": 1.5, "petType": "cats",
                                                            "untitledSingleSelectEnum": "option1",
                                                            "untitledMultipleSelectEnum": ["option1"],
                                                            "titledSingleSelectEnum": "value1",
                                                            "titledMultipleSelectEnum": ["value1"],
                                                            "legacyTitledEnum": "opt1"})

    async with connect(served.url, served.grant("alice"), mode, sampling_callback=on_sampling,
                       elicitation_callback=on_elicit) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"everything_trigger-sampling-request", "everything_trigger-elicitation-request"} <= names
        sampled = await client.call_tool("everything_trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
        assert "sampled by the caller" in sampled.content[0].text, sampled  # type: ignore[union-attr]
        elicited = await client.call_tool("everything_trigger-elicitation-request", {})
        assert not elicited.is_error and "Ada" in json.dumps(elicited.model_dump(mode="json")), elicited
    assert seen == ["sampling", "elicitation"]


async def test_two_callers_with_the_same_progress_token_each_get_their_own(served: Served) -> None:
    """Both SDK clients number their requests alike, so their progress tokens collide at the shared
    upstream unless the guard gives it tokens of its own."""
    seen: dict[str, list[float]] = {"alice": [], "bob": []}

    async def run(who: str) -> None:
        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            seen[who].append(value)

        async with connect(served.url, served.grant(who)) as client:
            done = await client.call_tool("rec_slow", {"seconds": 1}, progress_callback=on_progress)
            assert not done.is_error

    await asyncio.gather(run("alice"), run("bob"))
    assert seen == {"alice": [1, 2, 3, 4], "bob": [1, 2, 3, 4]}


async def test_plain_json_when_the_caller_accepts_only_json(served: Served) -> None:
    """No stream: the answer alone; a question for the caller cannot be put, so the upstream is
    told at once (the call ends, nothing waits)."""
    async with _raw(served, served.grant("alice"), accept="application/json", capabilities={"roots": {}}) as raw:
        answer = await raw.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                 "params": {"name": "rec_chatty", "arguments": {"ask": False}, "_meta": {"progressToken": "p"}}})
        assert answer.headers["content-type"].startswith("application/json")
        assert "chatty done" in answer.json()["result"]["content"][0]["text"]
        asked = await raw.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                "params": {"name": "rec_chatty", "arguments": {"ask": True}}})
        assert asked.headers["content-type"].startswith("application/json")
        assert "no open stream" in asked.text, asked.text


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_tool_list_changes_reach_only_callers_who_may_see_them(served: Served, mode: str) -> None:
    """Handshake era: on the GET stream; 2026-07-28: on subscriptions/listen.  Bob's grant does not
    cover the new tool: he hears nothing."""
    alice, bob = served.grant("alice"), served.grant("bob", ["rec/echo"])
    async with _raw(served, alice, mode=mode) as a, _raw(served, bob, mode=mode) as b:
        heard_a, heard_b = a.listen(), b.listen()
        await asyncio.sleep(0.5)  # streams open
        added = await a.post(a.call("rec_add_tool", {"name": "fresh"}))
        assert "added fresh" in json.dumps(added.json() if added.headers["content-type"].startswith("application/json")
                                            else _events(added.text))
        got_a = await asyncio.wait_for(a.next_event(lambda m: m.get("method") == "notifications/tools/list_changed"), 10)
        assert got_a["method"] == "notifications/tools/list_changed"
        await asyncio.sleep(1.0)
        assert not any(m.get("method") == "notifications/tools/list_changed" for m in b.heard)
        heard_a.cancel()
        heard_b.cancel()


async def test_a_policy_reload_tells_each_caller_whose_tools_changed(served: Served) -> None:
    alice, bob = served.grant("alice"), served.grant("bob", ["rec/read_note"])
    async with _raw(served, alice) as a, _raw(served, bob) as b:
        for raw in (a, b):
            listed = await raw.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert "rec_read_note" in listed.text
        heard_a, heard_b = a.listen(), b.listen()
        await asyncio.sleep(0.5)
        write_policies(served.tmp / "policies", [{"id": "all", "rules": [
            {"effect": "allow", "tools": ["rec/*", "everything/*"]}, {"effect": "deny", "tools": ["rec/echo"]}]}])
        got = await asyncio.wait_for(a.next_event(lambda m: m.get("method") == "notifications/tools/list_changed"), 15)
        assert got["method"] == "notifications/tools/list_changed"
        await asyncio.sleep(1.0)
        # bob never saw rec/echo: his tools did not change (his resources did: the new policies
        # have no resource rule, so that list_changed is right)
        assert not any(m.get("method") == "notifications/tools/list_changed" for m in b.heard), b.heard
        heard_a.cancel()
        heard_b.cancel()


async def test_resource_updates_reach_only_the_subscriber(served: Served) -> None:
    alice, bob = served.grant("alice"), served.grant("bob")
    async with _raw(served, alice) as a, _raw(served, bob) as b:
        heard_a, heard_b = a.listen(), b.listen()
        await asyncio.sleep(0.5)
        sub = await a.post({"jsonrpc": "2.0", "id": 3, "method": "resources/subscribe", "params": {"uri": DOC}})
        assert sub.status_code == 200 and "result" in (sub.json() if "json" in sub.headers["content-type"] else _events(sub.text)[-1])
        await a.post(a.call("everything_toggle-subscriber-updates", {}))
        try:
            got = await asyncio.wait_for(a.next_event(lambda m: m.get("method") == "notifications/resources/updated"), 15)
            assert got["params"]["uri"] == DOC
            assert not any(m.get("method") == "notifications/resources/updated" for m in b.heard)
        finally:
            await a.post(a.call("everything_toggle-subscriber-updates", {}))
        heard_a.cancel()
        heard_b.cancel()


async def test_resource_updates_reach_only_the_listen_that_subscribed_2026(served: Served) -> None:
    """2026-07-28 callers share serve's hub: an upstream's resource update goes to the listen that
    subscribed to that URI (tagged with its subscription id), and to no other caller's listen."""
    alice, bob = served.grant("alice"), served.grant("bob")
    async with _raw(served, alice, mode=MODERN) as a, _raw(served, bob, mode=MODERN) as b:
        heard_a = a.listen({"resourceSubscriptions": [DOC]})
        heard_b = b.listen({"resourcesListChanged": True})
        acks = [await asyncio.wait_for(r.next_event(lambda m: m.get("method") == "notifications/subscriptions/acknowledged"), 15)
                for r in (a, b)]
        assert acks[0]["params"]["notifications"] == {"resourceSubscriptions": [DOC]}, acks
        await a.post(a.call("everything_toggle-subscriber-updates", {}))
        try:
            got = await asyncio.wait_for(a.next_event(lambda m: m.get("method") == "notifications/resources/updated"), 15)
            assert got["params"]["uri"] == DOC and got["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen"
            assert not any(m.get("method") == "notifications/resources/updated" for m in b.heard)
        finally:
            await a.post(a.call("everything_toggle-subscriber-updates", {}))
        heard_a.cancel()
        heard_b.cancel()


async def test_what_a_caller_held_upstream_goes_when_its_session_ends(served: Served) -> None:
    """A shared upstream subscription stays while any caller holds it and is dropped upstream when
    the last one's session ends; the shared log level goes back up to what the callers left asked
    for.  A caller cannot drop another's subscription by unsubscribing what it never held."""
    alice, bob = served.grant("alice"), served.grant("bob")

    def upstream(method: str) -> list[Any]:
        return [r.get("uri", r.get("level")) for r in served.watched.records() if r["method"] == method]

    async def settles(method: str, expected: list[Any]) -> None:
        for _ in range(100):
            if upstream(method) == expected:
                return
            await asyncio.sleep(0.1)
        assert upstream(method) == expected

    async with _raw(served, alice) as a, _raw(served, bob) as b:
        assert "result" in _answer(await a.post(_request("resources/subscribe", uri=WATCHED)))
        assert "result" in _answer(await b.post(_request("resources/unsubscribe", uri=WATCHED)))  # not bob's to drop
        assert "result" in _answer(await b.post(_request("resources/subscribe", uri=WATCHED)))
        assert "result" in _answer(await b.post(_request("logging/setLevel", level="warning")))
        assert "result" in _answer(await a.post(_request("logging/setLevel", level="debug")))
        assert upstream("resources/unsubscribe") == [] and upstream("logging/setLevel") == ["warning", "debug"]

        assert (await a.http.delete(a.url, headers=a.headers())).status_code == 200  # alice leaves
        await settles("logging/setLevel", ["warning", "debug", "warning"])
        assert upstream("resources/unsubscribe") == []  # bob still holds it

        assert (await b.http.delete(b.url, headers=b.headers())).status_code == 200  # the last holder leaves
        await settles("resources/unsubscribe", [WATCHED])
        assert upstream("logging/setLevel") == ["warning", "debug", "warning"]  # nobody left to lower it for


async def test_a_hidden_uri_is_unknown_on_every_resource_method_whoever_holds_it(served: Served) -> None:
    """bob's grant hides the watched resource: subscribe, read and unsubscribe of it answer exactly
    as an unknown URI does, whether or not alice holds a subscription to it (no existence oracle
    across callers), each refusal is audited, and alice's subscription stays upstream."""
    alice = served.grant("alice")
    bob = issue_grant(served.key, "corp-idp", "bob", "agent", ["rec/*"], resources=["everything/*"])
    unknown = f"Resource not found: {WATCHED}"

    def refusals() -> list[str]:
        return [r["method"] for r in (json.loads(line) for line in (served.tmp / "audit.jsonl").read_text().splitlines())
                if r.get("decision") == "unknown" and WATCHED in json.dumps(r) and "bob" in json.dumps(r)]

    async with _raw(served, alice) as a, _raw(served, bob) as b:
        before = _answer(await b.post(_request("resources/unsubscribe", uri=WATCHED)))  # nobody holds it
        assert "result" in _answer(await a.post(_request("resources/subscribe", uri=WATCHED)))
        for method in ("resources/unsubscribe", "resources/subscribe", "resources/read"):
            got = _answer(await b.post(_request(method, uri=WATCHED)))
            assert got["error"] == before["error"] and got["error"]["message"] == unknown, (method, got)
        assert [r.get("uri") for r in served.watched.records() if r["method"] == "resources/unsubscribe"] == []
    for _ in range(50):
        if len(refusals()) >= 4:
            break
        await asyncio.sleep(0.1)
    assert len(refusals()) == 4


@pytest.mark.parametrize("serve", [{"max_sessions_per_principal": 1}, {"session_idle": "2s"}], ids=["evicted", "expired"])
async def test_a_subscription_goes_upstream_when_its_session_is_evicted_or_expires(tmp_path: Path, serve: dict[str, Any]) -> None:
    served = Served(tmp_path, **serve)
    with serving_in_process(served.config, served.port):
        async with _raw(served, served.grant("alice")) as a:
            assert "result" in _answer(await a.post(_request("resources/subscribe", uri=WATCHED)))
            if "max_sessions_per_principal" in serve:
                async with _raw(served, served.grant("alice")):  # alice's second session: the first goes
                    pass
            for _ in range(150):
                if any(r["method"] == "resources/unsubscribe" for r in served.watched.records()):
                    break
                await asyncio.sleep(0.1)
            assert [r.get("uri") for r in served.watched.records() if r["method"] == "resources/unsubscribe"] == [WATCHED]
            assert (await a.post(_request("ping"))).status_code == 404  # it really is gone


def _request(method: str, rid: int = 3, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


def _answer(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json() if "json" in response.headers["content-type"] else _events(response.text)[-1]
    return found


# --------------------------------------------------------------------------- raw HTTP: attacks


class Raw:
    """A caller speaking raw Streamable HTTP: one session (handshake era) or none (2026-07-28)."""

    def __init__(self, http: httpx2.AsyncClient, url: str, token: str, mode: str, accept: str) -> None:
        self.http, self.url, self.token, self.mode = http, url, token, mode
        self.sid: str | None = None
        self.accept = accept
        self.heard: list[dict[str, Any]] = []
        self._new = asyncio.Event()

    def headers(self, **extra: str) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}", "Accept": self.accept, **extra}
        if self.sid:
            h["Mcp-Session-Id"] = self.sid
        return h

    def meta(self, **extra: Any) -> dict[str, Any]:
        if self.mode != MODERN:
            return extra
        return {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}, **extra}

    def call(self, name: str, args: dict[str, Any], rid: int = 9, **meta: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args, "_meta": self.meta(**meta)}}

    async def post(self, body: dict[str, Any], **headers: str) -> httpx2.Response:
        return await self.http.post(self.url, json=body, headers=self.headers(**headers))

    async def open(self, capabilities: dict[str, Any] | None = None) -> None:
        if self.mode == MODERN:
            return
        init = await self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": capabilities or {}, "clientInfo": {"name": "raw", "version": "1"}}})
        assert init.status_code == 200, init.text
        self.sid = init.headers["mcp-session-id"]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def listen(self, notifications: dict[str, Any] | None = None) -> asyncio.Task[None]:
        """Read the GET stream (handshake era) or a subscriptions/listen response (2026-07-28) into ``heard``."""
        async def read() -> None:
            if self.mode == MODERN:
                body = {"jsonrpc": "2.0", "id": "listen", "method": "subscriptions/listen",
                        "params": {"notifications": notifications or {"toolsListChanged": True}, "_meta": self.meta()}}
                request = self.http.build_request("POST", self.url, json=body, headers=self.headers())
            else:
                request = self.http.build_request("GET", self.url, headers=self.headers(Accept="text/event-stream"))
            response = await self.http.send(request, stream=True)
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    self.heard.append(json.loads(line[5:]))
                    self._new.set()
        return asyncio.ensure_future(read())

    async def next_event(self, match: Any) -> dict[str, Any]:
        while True:
            found = next((m for m in self.heard if match(m)), None)
            if found is not None:
                return found
            self._new.clear()
            await self._new.wait()


@contextlib.asynccontextmanager
async def _raw(served: Served, token: str, *, mode: str = "legacy", accept: str = ACCEPT["Accept"],
               capabilities: dict[str, Any] | None = None) -> AsyncIterator[Raw]:
    async with httpx2.AsyncClient(timeout=30) as http:
        raw = Raw(http, served.url, token, mode, accept)
        await raw.open(capabilities)
        yield raw


async def _question(raw: Raw) -> tuple[asyncio.Task[list[dict[str, Any]]], dict[str, Any]]:
    """Start rec_chatty (it asks for the roots) on an SSE stream; return the reader and the question."""
    seen: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def read() -> list[dict[str, Any]]:
        request = raw.http.build_request("POST", raw.url, json=raw.call("rec_chatty", {"ask": True}, rid=7, progressToken="t"),
                                         headers=raw.headers())
        response = await raw.http.send(request, stream=True)
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line[5:]))
                got.set()
        return seen

    reader = asyncio.ensure_future(read())
    for _ in range(200):
        question = next((m for m in seen if m.get("method") == "roots/list"), None)
        if question is not None:
            return reader, question
        got.clear()
        await asyncio.wait_for(got.wait(), 10)
    raise AssertionError(f"no roots/list question: {seen}")


async def test_an_answer_from_another_session_is_never_taken(served: Served) -> None:
    alice, mallory = served.grant("alice"), served.grant("mallory")
    roots = {"roots": {}}
    async with _raw(served, alice, capabilities=roots) as a, _raw(served, mallory, capabilities=roots) as m, \
            _raw(served, alice, capabilities=roots) as a2:
        reader, question = await _question(a)
        forged = {"jsonrpc": "2.0", "id": question["id"], "result": {"roots": [{"uri": "file:///mallory"}]}}
        assert (await m.post(forged)).status_code == 400  # mallory's own session asked her nothing
        stolen = await m.http.post(m.url, json=forged, headers={**m.headers(), "Mcp-Session-Id": a.sid or ""})
        assert stolen.status_code == 403  # alice's session, mallory's token
        assert (await a2.post(forged)).status_code == 400  # even alice's other session cannot answer it
        ok = await a.post({"jsonrpc": "2.0", "id": question["id"], "result": {"roots": [{"uri": "file:///alice"}]}})
        assert ok.status_code == 202
        events = await asyncio.wait_for(reader, 20)
    final = events[-1]
    assert final["id"] == 7 and "file:///alice" in final["result"]["content"][0]["text"]
    assert "mallory" not in json.dumps(events)
    assert [e["params"]["progress"] for e in events if e.get("method") == "notifications/progress"] == [1, 2, 3, 4]


async def test_get_streams_belong_to_their_session_and_caller(served: Served) -> None:
    alice, mallory = served.grant("alice"), served.grant("mallory")
    async with _raw(served, alice) as a, _raw(served, mallory) as m:
        listening = a.listen()
        await asyncio.sleep(0.5)
        second = await a.http.get(a.url, headers=a.headers(Accept="text/event-stream"))
        assert second.status_code == 409
        foreign = await m.http.get(m.url, headers={**m.headers(Accept="text/event-stream"), "Mcp-Session-Id": a.sid or ""})
        assert foreign.status_code == 403
        unknown = await m.http.get(m.url, headers={**m.headers(Accept="text/event-stream"), "Mcp-Session-Id": "nope"})
        assert unknown.status_code == 404
        modern = await a.http.get(a.url, headers={"Authorization": f"Bearer {alice}", "Accept": "text/event-stream"})
        assert modern.status_code == 405  # no session: 2026-07-28 callers use subscriptions/listen
        listening.cancel()
        await asyncio.sleep(0.3)
        again = a.listen()  # the first stream is gone: a new one may open
        await asyncio.sleep(0.5)
        assert not again.done()
        again.cancel()


async def test_a_reader_that_hangs_up_cancels_its_call_and_nothing_hangs(served: Served) -> None:
    alice = served.grant("alice")
    async with _raw(served, alice, capabilities={"roots": {}}) as a:
        reader, question = await _question(a)
        reader.cancel()  # the caller goes away with the roots question unanswered
        await asyncio.sleep(1.0)
        late = await a.post({"jsonrpc": "2.0", "id": question["id"], "result": {"roots": []}})
        assert late.status_code == 400  # that question is closed
        again = await a.post(a.call("rec_echo", {"text": "still here"}))
        assert "still here" in again.text
    log = (served.config.parent / "serve.log").read_text()
    assert "Traceback" not in log


async def test_at_most_sixteen_listens_per_caller(served: Served) -> None:
    alice = served.grant("alice")
    async with _raw(served, alice, mode=MODERN) as a:
        listens = [a.listen() for _ in range(16)]
        await asyncio.sleep(1.5)
        body = {"jsonrpc": "2.0", "id": "one-too-many", "method": "subscriptions/listen",
                "params": {"notifications": {"toolsListChanged": True}, "_meta": a.meta()}}
        refused = await a.post(body)
        events = refused.json() if refused.headers["content-type"].startswith("application/json") else _events(refused.text)[-1]
        assert "at most 16" in events["error"]["message"]
        json_only = await a.http.post(a.url, json=body, headers={**a.headers(), "Accept": "application/json"})
        assert "text/event-stream" in json_only.json()["error"]["message"]
        for task in listens[:2]:
            task.cancel()
        await asyncio.sleep(1.0)
        one_more = a.listen()  # closing a stream cancels its listen: room for another
        await asyncio.sleep(1.0)
        assert not one_more.done()
        for task in [*listens, one_more]:
            task.cancel()

