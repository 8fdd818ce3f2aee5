"""The approval page of ``mcp-guard serve``: URL-mode elicitation points the human at it, the human
signs in at the same OAuth issuer (a real oidc-provider, authorization code + PKCE) and answers;
the caller's own answer never counts.

Driven with httpx as a browser would (following the IdP's redirects, signing in as a chosen
user), plus one headless-Chromium screenshot.  Beside the happy paths (both protocol eras): a
missing or wrong CSRF token, another user, the calling agent's own identity, tampered and replayed
ids, a right-to-left override in an argument, a retry with changed arguments, and the caller
answering the elicitation itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx2
import pytest
import yaml
from fixtures import (
    free_port,
    mcp_guard_bin,
    requires_tools,
    stop_process,
    tool_path,
    tools_env,
    wait_for_port,
)
from test_report_e2e import _png_ink, screenshot
from test_serve_oauth import ACCEPT, CLIENTS, OIDC_SCRIPT, Idp, Served, post, start_serve
from test_serve_streams import Raw

pytestmark = [pytest.mark.xdist_group("approval-page"), pytest.mark.e2e, requires_tools("node")]

PAGE_CLIENT = {"secret": "s-approvals"}
ACCOUNTS = {"alice@example.com": {"name": "Alice Liddell", "email": "alice@example.com"},
            "bob@example.com": {"name": "Bob", "email": "bob@example.com"}}
URL_CAPS = {"elicitation": {"url": {}}}


class Page:
    """One guard with its approval page, and the IdP its callers and approvers use."""

    def __init__(self, tmp: Path, state_url: str | None = None) -> None:
        self.idp = Idp(free_port())
        self.served = Served(tmp, self.idp, approvals={"client_id": "approvals-ui", "client_secret": PAGE_CLIENT["secret"],
                                                       "approvers": ["alice@example.com", "planner"]})
        self.base = f"http://127.0.0.1:{self.served.port}"
        config = yaml.safe_load(self.served.config.read_text())
        config["approvals"]["state_key"] = "k" * 40  # replicas open each other's sign-in cookies
        config["telemetry"] = {"traces_exporter": "console"}  # spans on the guard's stderr (serve.log)
        if state_url is not None:
            config["state"] = {"url": state_url}
        self.served.config.write_text(yaml.safe_dump(config))
        self.replica_port = free_port()  # a second replica: same config, same state store
        self.idp_config = {"clients": {**CLIENTS, "approvals-ui": {**PAGE_CLIENT, "redirect_uris": [f"{self.base}/approvals/callback"],
                                                                  "scope": "openid profile email"}},
                           "accounts": ACCOUNTS}
        self.token = ""

    def calls(self, tool: str) -> list[Any]:
        return [args for name, args in self.served.record.calls() if name == tool]


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def page(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """Every page test runs on both shared stores: the default sqlite file, and a real Redis."""
    tmp = tmp_path_factory.mktemp("page")
    state_url = None
    if request.param == "redis":
        base: str = request.getfixturevalue("redis_url")
        state_url = base.rsplit("/", 1)[0] + "/7"  # a database of its own: the state tests flush theirs
    setup = Page(tmp, state_url)
    log = (tmp / "idp.log").open("w")
    idp = subprocess.Popen([str(tool_path("node")), str(OIDC_SCRIPT), str(setup.idp.port), json.dumps(setup.idp_config)],
                           stdout=log, stderr=subprocess.STDOUT, env=tools_env())
    guards: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port(setup.idp.port, timeout=30, proc=idp)
        guards.append(start_serve(setup.served))
        replica_log = (tmp / "replica.log").open("ab")
        guards.append(subprocess.Popen([str(mcp_guard_bin()), "serve", "--config", str(setup.served.config),
                                        "--port", str(setup.replica_port)], stdout=replica_log, stderr=subprocess.STDOUT,
                                       env=tools_env()))
        wait_for_port(setup.replica_port, timeout=60, proc=guards[-1])
        setup.token = setup.idp.token("planner", setup.served.url)  # user alice@example.com, agent planner
        yield setup
    finally:
        for guard in guards:
            stop_process(guard)
        stop_process(idp)
        log.close()


# --------------------------------------------------------------------------- the caller and the browser


async def legacy_session(page: Page, caps: dict[str, Any] | None = None, url: str | None = None) -> dict[str, str]:
    """An initialized 2025-11-25 session that declared URL elicitation; its request headers."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": URL_CAPS if caps is None else caps,
                       "clientInfo": {"name": "agent-host", "version": "1"}}}
    res = await post(url or page.served.url, page.token, init)
    assert res.status_code == 200, res.text
    headers = {"Mcp-Session-Id": res.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
    await post(url or page.served.url, page.token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, **headers)
    return headers


async def call(page: Page, headers: dict[str, str], args: dict[str, Any], rid: int = 2, url: str | None = None,
               **params: Any) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "rec_write_note", "arguments": args, **params}}
    async with httpx2.AsyncClient(timeout=30) as http:
        res = await http.post(url or page.served.url, json=body, headers={**ACCEPT, "Authorization": f"Bearer {page.token}", **headers})
    assert res.status_code == 200, res.text
    return dict(res.json())


def elicited(answer: dict[str, Any]) -> dict[str, Any]:
    """The URL-mode elicitation of a -32042 answer."""
    assert answer.get("error", {}).get("code") == -32042, answer
    (one,) = answer["error"]["data"]["elicitations"]
    assert one["mode"] == "url" and one["url"].endswith("/approvals/" + one["elicitationId"])
    return dict(one)


async def sign_in(url: str, user: str) -> tuple[httpx2.AsyncClient, str]:
    """A fresh browser opening ``url``: it follows the IdP's redirects, signs in as ``user`` and
    lands on the page; returns the browser (keep it: it holds the session cookie) and the HTML."""
    browser = httpx2.AsyncClient(timeout=30)
    res = await browser.get(url)
    for _ in range(20):
        if res.status_code not in (302, 303):
            break
        nxt = urljoin(str(res.url), res.headers["location"])
        if "/interaction/" in nxt and "login=" not in nxt:
            nxt += "?login=" + quote(user)
        res = await browser.get(nxt)
    assert res.status_code == 200 and 'http-equiv="refresh"' in res.text, (res.status_code, res.text[:500])
    landing = await browser.get(url)
    return browser, landing.text


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


async def answer(browser: httpx2.AsyncClient, url: str, decision: str, csrf: str | None, **extra: str) -> httpx2.Response:
    form = {"decision": decision, **({"csrf": csrf} if csrf is not None else {}), **extra}
    return await browser.post(url, data=form)


COMPLETE = "notifications/elicitation/complete"

# --------------------------------------------------------------------------- happy paths


async def test_handshake_caller_is_pointed_at_the_page_and_the_approval_is_used_once(page: Page) -> None:
    headers = await legacy_session(page)
    args = {"path": "once.txt", "text": "hello"}
    asked = elicited(await call(page, headers, args))
    assert page.calls("write_note") == []
    browser, html = await sign_in(asked["url"], "alice@example.com")
    async with contextlib.aclosing(browser):
        assert "waiting for an answer" in html and "rec/write_note" in html and "once.txt" in html
        assert "user:alice@example.com" in html and "agent:planner" in html and "support" in html
        res = await answer(browser, asked["url"], "approve", csrf_of(html))
        assert res.status_code == 303
        assert "approved" in (await browser.get(asked["url"])).text
    done = await call(page, headers, args, rid=3)
    assert done["result"]["isError"] is False, done
    assert page.calls("write_note") == [args]
    again = elicited(await call(page, headers, args, rid=4))  # single use: the same call asks again
    assert again["elicitationId"] != asked["elicitationId"] and page.calls("write_note") == [args]
    approved = [a for a in page.served.audit() if a.get("decision") == "approved"][-1]
    assert approved["approval"]["channel"] == "page" and approved["approval"]["id"] == asked["elicitationId"]
    assert f"sub alice@example.com at {page.idp.issuer}" in approved["approver"] and "Alice Liddell" in approved["approver"]
    assert "agent-host" not in approved["approver"]  # never the caller's clientInfo
    # the span carries the same approver
    wanted = json.dumps({"mcp_guard.approver": approved["approver"]})[1:-1]
    log = page.served.tmp / "serve.log"
    for _ in range(100):
        if wanted in log.read_text():
            break
        await asyncio.sleep(0.2)
    assert wanted in log.read_text()


async def test_a_2026_caller_gets_url_input_required_and_its_own_accept_never_approves(page: Page) -> None:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": URL_CAPS,
            "io.modelcontextprotocol/clientInfo": {"name": "agent-host", "version": "1"}}
    args = {"path": "modern.txt", "text": "x"}
    first = (await call(page, {}, args, _meta=meta))["result"]
    assert first["resultType"] == "input_required"
    (request,) = first["inputRequests"].values()
    assert request["method"] == "elicitation/create" and request["params"]["mode"] == "url"
    url, state = request["params"]["url"], first["requestState"]
    # the caller answers its own elicitation with "accept" (and a form-style approve): still waiting
    self_answer = {key: {"action": "accept", "content": {"approve": True}} for key in first["inputRequests"]}
    retry = (await call(page, {}, args, rid=3, _meta=meta, requestState=state, inputResponses=self_answer))["result"]
    assert retry["resultType"] == "input_required" and args not in page.calls("write_note")
    flipped = state[:10] + ("A" if state[10] != "A" else "B") + state[11:]
    tampered = (await call(page, {}, args, rid=6, _meta=meta, requestState=flipped, inputResponses=self_answer))["result"]
    assert tampered["isError"] is True and "invalid, expired or already used" in tampered["content"][0]["text"]
    browser, html = await sign_in(url, "alice@example.com")
    async with contextlib.aclosing(browser):
        assert (await answer(browser, url, "approve", csrf_of(html))).status_code == 303
    other_args = (await call(page, {}, {**args, "text": "y"}, rid=7, _meta=meta, requestState=retry["requestState"]))["result"]
    assert other_args["isError"] is True  # the state is bound to the arguments it was issued for
    done = (await call(page, {}, args, rid=4, _meta=meta, requestState=retry["requestState"]))["result"]
    assert done.get("isError") is False, done
    assert page.calls("write_note").count(args) == 1
    replay = (await call(page, {}, args, rid=5, _meta=meta, requestState=retry["requestState"]))["result"]
    assert replay["isError"] is True and "invalid, expired or already used" in replay["content"][0]["text"]
    assert page.calls("write_note").count(args) == 1


async def test_a_caller_without_url_elicitation_still_waits_in_the_queue(page: Page) -> None:
    headers = await legacy_session(page, caps={"elicitation": {"form": {}}})
    async with httpx2.AsyncClient(timeout=60) as http:
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "rec_write_note", "arguments": {"path": "q"}}}
        pending = asyncio.ensure_future(http.post(page.served.url, json=body, headers={
            **ACCEPT, "Authorization": f"Bearer {page.token}", **headers}))
        from fixtures.serving import cli as _cli

        from mcp_guard.audit import args_hash

        digest = args_hash({"path": "q"})

        waiting: list[dict[str, Any]] = []
        for _ in range(60):
            listed = await _cli("approvals", "list", "--json", "--config", str(page.served.config))
            waiting = [w for line in listed.stdout.splitlines() if line.strip() and (w := json.loads(line))["args_sha256"] == digest]
            if waiting:
                break
            await asyncio.sleep(0.2)
        assert len(waiting) == 1 and not pending.done()
        # the page can answer a queued request too
        browser, html = await sign_in(f"{page.base}/approvals/{waiting[0]['id']}", "alice@example.com")
        async with contextlib.aclosing(browser):
            assert (await answer(browser, f"{page.base}/approvals/{waiting[0]['id']}", "deny", csrf_of(html),
                                 reason="not now")).status_code == 303
        res = await asyncio.wait_for(pending, 30)
    assert res.json()["result"]["isError"] is True and "not now" in res.json()["result"]["content"][0]["text"]
    assert {"path": "q"} not in page.calls("write_note")


# --------------------------------------------------------------------------- attacks


async def test_csrf_other_users_and_the_agents_own_identity_cannot_answer(page: Page) -> None:
    headers = await legacy_session(page)
    args = {"path": "guarded.txt", "text": "t"}
    url = elicited(await call(page, headers, args))["url"]
    browser, html = await sign_in(url, "alice@example.com")
    async with contextlib.aclosing(browser):
        assert (await answer(browser, url, "approve", None)).status_code == 403  # no CSRF token
        assert (await answer(browser, url, "approve", "x" * 43)).status_code == 403  # a wrong one
        assert (await answer(browser, url, "approve", csrf_of(html) + "\u00e9")).status_code == 403  # not even ASCII
        assert "waiting for an answer" in (await browser.get(url)).text
    # the calling agent's own identity (even though listed in approvers) and a user who is not an approver
    for intruder in ("planner", "bob@example.com"):
        other, other_html = await sign_in(url, intruder)
        async with contextlib.aclosing(other):
            assert "No such approval request" in other_html and "guarded.txt" not in other_html
            res = await answer(other, url, "approve", "whatever")
            assert res.status_code == 404 and "guarded.txt" not in res.text, intruder
    assert elicited(await call(page, headers, args, rid=3))["url"] == url  # still pending
    assert args not in page.calls("write_note")


async def test_tampered_unknown_and_replayed_ids_reveal_nothing(page: Page) -> None:
    headers = await legacy_session(page)
    args = {"path": "ids.txt"}
    asked = elicited(await call(page, headers, args))
    url = asked["url"]
    browser, html = await sign_in(url, "alice@example.com")
    async with contextlib.aclosing(browser):
        csrf = csrf_of(html)
        tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
        for bad in (tampered, f"{page.base}/approvals/ffffffff", f"{page.base}/approvals/..%2f..%2fetc", f"{page.base}/approvals/" + "a" * 65):
            res = await browser.get(bad)
            assert res.status_code == 404 and "rec/write_note" not in res.text and "ids.txt" not in res.text, bad
        assert (await answer(browser, tampered, "approve", csrf)).status_code == 404
        assert (await answer(browser, url, "approve", csrf)).status_code == 303
        assert (await answer(browser, url, "deny", csrf)).status_code == 303  # already answered: nothing changes
        assert "approved" in (await browser.get(url)).text
    async with httpx2.AsyncClient() as stranger:  # not signed in: sent to sign in, whether the id exists or not
        for probe in (url, tampered):
            res = await stranger.get(probe)
            assert res.status_code == 303 and res.headers["location"].startswith(page.idp.issuer)
        assert (await stranger.post(url, data={"decision": "approve"})).status_code == 403
    assert (await call(page, headers, args, rid=3))["result"]["isError"] is False
    assert elicited(await call(page, headers, args, rid=4))["elicitationId"] != asked["elicitationId"]  # not replayable
    assert page.calls("write_note").count(args) == 1


async def test_changed_arguments_are_a_new_approval(page: Page) -> None:
    headers = await legacy_session(page)
    approved_args, changed = {"path": "a.txt", "text": "ok"}, {"path": "a.txt", "text": "ok; rm -rf /"}
    asked = elicited(await call(page, headers, approved_args))
    browser, html = await sign_in(asked["url"], "alice@example.com")
    async with contextlib.aclosing(browser):
        await answer(browser, asked["url"], "approve", csrf_of(html))
        other = elicited(await call(page, headers, changed, rid=3))
        assert other["elicitationId"] != asked["elicitationId"] and changed not in page.calls("write_note")
        assert (await call(page, headers, approved_args, rid=4))["result"]["isError"] is False
        # the changed call, denied on its own page, is refused with the reason; then it asks again
        await answer(browser, other["url"], "deny", csrf_of((await browser.get(other["url"])).text), reason="wrong text")
    refused = (await call(page, headers, changed, rid=5))["result"]
    assert refused["isError"] is True and "rejected by alice@example.com" in refused["content"][0]["text"]
    assert "wrong text" in refused["content"][0]["text"] and changed not in page.calls("write_note")
    assert elicited(await call(page, headers, changed, rid=6))["elicitationId"] not in (asked["elicitationId"], other["elicitationId"])


async def test_bidi_and_invisible_characters_are_shown_escaped_and_the_page_renders(page: Page, tmp_path: Path) -> None:
    headers = await legacy_session(page)
    blanks = "\u034f\u115f\u1160\u3164\uffa0\u2800"  # render as nothing or as a blank cell
    sneaky = "invoice\u202etxt.exe\u200b<script>alert(1)</script>" + blanks + "x" * 3000 + "END-OF-VALUE"
    url = elicited(await call(page, headers, {"path": "bidi.txt", "text": sneaky}))["url"]
    browser, html = await sign_in(url, "alice@example.com")
    async with contextlib.aclosing(browser):
        res = await browser.get(url)
    assert "\u202e" not in html and "\u200b" not in html
    assert "\u27e8U+202E\u27e9" in html and "\u27e8U+200B\u27e9" in html
    assert not any(ch in html for ch in blanks) and all(f"\u27e8U+{ord(ch):04X}\u27e9" in html for ch in blanks)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "END-OF-VALUE" in html  # nothing clipped
    csp = res.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
    cookie = next(c for c in browser.cookies.jar if c.name == "mcp_guard_approver")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/approvals" and not cookie.secure
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: run scripts/setup (it installs Debian's chromium)"
    saved = tmp_path / "approval.html"
    saved.write_text(html)
    shot = screenshot(chromium, saved, tmp_path / "approval.png")
    width, height, ink = _png_ink(shot)
    assert (width, height) == (1200, 1600) and ink > 0.005, ink


async def test_replicas_share_requests_answers_and_sign_ins_through_the_state_store(page: Page) -> None:
    """Asked on the replica, signed in starting from the replica's page, answered and retried there:
    the request and the answer live in the shared store, the sign-in cookie opens on both."""
    replica = f"http://127.0.0.1:{page.replica_port}"
    headers = await legacy_session(page, url=replica + "/mcp")
    args = {"path": "replica.txt"}
    asked = elicited(await call(page, headers, args, url=replica + "/mcp"))
    assert asked["url"].startswith(page.base)  # links name the public origin (serve.url)
    on_replica = f"{replica}/approvals/{asked['elicitationId']}"
    browser, _ = await sign_in(on_replica, "alice@example.com")  # the callback is served by the first replica
    async with contextlib.aclosing(browser):
        html = (await browser.get(on_replica)).text
        assert "replica.txt" in html
        assert (await answer(browser, asked["url"], "approve", csrf_of(html))).status_code == 303
    assert (await call(page, headers, args, rid=3, url=replica + "/mcp"))["result"]["isError"] is False
    assert page.calls("write_note").count(args) == 1


async def test_the_asking_session_with_a_get_stream_is_told_the_elicitation_is_complete(page: Page) -> None:
    """Approved or denied on the page: the session that was pointed at it hears
    ``notifications/elicitation/complete`` on its GET stream; another session of the same caller,
    also listening, hears nothing about it."""
    async with httpx2.AsyncClient(timeout=30) as http:
        mine, other = (Raw(http, page.served.url, page.token, "legacy", ACCEPT["Accept"]) for _ in range(2))
        for raw in (mine, other):
            await raw.open(URL_CAPS)
        readers = [mine.listen(), other.listen()]
        try:
            args = {"path": "notify.txt", "text": "n"}
            asked = elicited(await call(page, {"Mcp-Session-Id": str(mine.sid), "Mcp-Protocol-Version": "2025-11-25"}, args))
            theirs = elicited(await call(page, {"Mcp-Session-Id": str(other.sid), "Mcp-Protocol-Version": "2025-11-25"},
                                         {"path": "notify-other.txt"}))
            browser, html = await sign_in(asked["url"], "alice@example.com")
            async with contextlib.aclosing(browser):
                assert (await answer(browser, asked["url"], "approve", csrf_of(html))).status_code == 303
                heard = await asyncio.wait_for(mine.next_event(lambda m: m.get("method") == COMPLETE), 10)
                assert heard == {"jsonrpc": "2.0", "method": COMPLETE, "params": {"elicitationId": asked["elicitationId"]}}
                denied = await answer(browser, theirs["url"], "deny", csrf_of((await browser.get(theirs["url"])).text))
                assert denied.status_code == 303
                told = await asyncio.wait_for(other.next_event(lambda m: m.get("method") == COMPLETE), 10)
                assert told["params"] == {"elicitationId": theirs["elicitationId"]}
                # answering again changes nothing and tells nobody again
                await answer(browser, asked["url"], "deny", csrf_of(html))
            await asyncio.sleep(0.5)
            assert [m["params"] for m in mine.heard if m.get("method") == COMPLETE] == [{"elicitationId": asked["elicitationId"]}]
            assert [m["params"] for m in other.heard if m.get("method") == COMPLETE] == [{"elicitationId": theirs["elicitationId"]}]
            done = await call(page, {"Mcp-Session-Id": str(mine.sid), "Mcp-Protocol-Version": "2025-11-25"}, args, rid=3)
            assert done["result"]["isError"] is False and args in page.calls("write_note")
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)


async def test_no_notice_without_a_get_stream_and_none_for_a_2026_caller(page: Page) -> None:
    """A session without a GET stream is not told (the answer waits for its retry), and a
    2026-07-28 caller, which has no session to tell, still redeems its state as before."""
    headers = await legacy_session(page)
    args = {"path": "quiet.txt"}
    asked = elicited(await call(page, headers, args))
    browser, html = await sign_in(asked["url"], "alice@example.com")
    async with contextlib.aclosing(browser):
        assert (await answer(browser, asked["url"], "approve", csrf_of(html))).status_code == 303
    assert (await call(page, headers, args, rid=3))["result"]["isError"] is False
