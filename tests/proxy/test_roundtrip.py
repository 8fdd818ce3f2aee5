"""``proxy/roundtrip.py``: a 2026-07-28 upstream's ``input_required`` for a 2026-07-28 host.  Its
questions are mediated (declared capabilities, configured roots, flow labels); its state reaches the
host only sealed, bound to the call, fresh and single use; anything else the host sends back is
refused with one sentence.  Beside the happy path: forged, altered, replayed, expired, moved to
another tool, arguments, principal or session, and answers to questions never asked."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from mcp_guard.errors import RpcError
from mcp_guard.identity import Principal
from mcp_guard.jsonrpc import Era, result
from mcp_guard.proxy.roundtrip import PREFIX, REFUSED, STATE_SECONDS, Refused, RoundTrips, holds, relayable
from mcp_guard.request import RequestContext, Target
from mcp_guard.state.memory import MemoryStore

ELICIT = {"method": "elicitation/create", "params": {"message": "Which date?", "requestedSchema": {"type": "object"}}}
ROOTS = {"method": "roots/list", "params": {}}
SAMPLE = {"method": "sampling/createMessage", "params": {"messages": [], "maxTokens": 5}}
FORM = {"elicitation": {"form": {}}}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # the store expires its counters by the wall clock

    def __call__(self) -> float:
        return self.now


def trips(clock: Clock | None = None, *, state_key: str | None = None, per_session: bool = True) -> RoundTrips:
    ctx = SimpleNamespace(config=SimpleNamespace(approvals=SimpleNamespace(state_key=state_key)),
                          clock=clock or Clock(), store=MemoryStore())
    return RoundTrips(ctx, per_session=per_session)  # type: ignore[arg-type]


def upstream(roots: Any = None) -> Any:
    return SimpleNamespace(name="ask", config=SimpleNamespace(roots=roots))


def request(user: str = "alice", session: str = "s1") -> RequestContext:
    return RequestContext(session_id=session, principal=Principal(user, ("agent",)), chain=None, era=Era.MODERN,
                          protocol_version="2026-07-28", message={"id": 1, "method": "tools/call"}, capabilities=FORM,
                          client_info={})


BOOK = Target("ask_book", "ask", "book", "ask/book", {"name": "ask_book"}, None)
PLAN = Target("ask_plan", "ask", "plan", "ask/plan", {"name": "ask_plan"}, None)


class Labels:
    """The back channel's ``brings``: records what each question brought (False: cannot record)."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.seen: list[Any] = []

    async def __call__(self, up: Any, message: dict[str, Any]) -> bool:
        self.seen.append(message["method"])
        return self.ok


def asking(*questions: tuple[str, dict[str, Any]], state: str | None = "upstream-own-state") -> dict[str, Any]:
    out: dict[str, Any] = {"resultType": "input_required", "inputRequests": dict(questions)}
    if state is not None:
        out["requestState"] = state
    return result(7, out)


async def issued(rt: RoundTrips, req: RequestContext | None = None, target: Target = BOOK, args: str = "digest",
                 *questions: tuple[str, dict[str, Any]], up: Any = None) -> dict[str, Any]:
    req = req or request()
    out, _ = await rt.pass_on(asking(*(questions or (("date", ELICIT),))), up or upstream(), rt.bound(req, target, args),
                           req.capabilities, Labels())
    return out["result"]


async def test_the_host_gets_the_questions_and_a_sealed_state_and_the_upstream_its_own_back() -> None:
    rt = trips()
    out = await issued(rt)
    assert out["resultType"] == "input_required" and out["inputRequests"] == {"date": ELICIT}
    assert out["requestState"].startswith(PREFIX) and "upstream-own-state" not in out["requestState"]
    retry = {"name": "ask_book", "requestState": out["requestState"], "inputResponses": {"date": {"action": "accept"}}}
    assert holds(retry)
    sent = await rt.redeem(retry, rt.bound(request(), BOOK, "digest"))
    assert sent == {"requestState": "upstream-own-state", "inputResponses": {"date": {"action": "accept"}}}


async def test_no_upstream_state_none_sent_back() -> None:
    rt = trips()
    req = request()
    out, _ = await rt.pass_on(asking(("date", ELICIT), state=None), upstream(), rt.bound(req, BOOK, "d"), FORM, Labels())
    sent = await rt.redeem({"requestState": out["result"]["requestState"], "inputResponses": {}}, rt.bound(req, BOOK, "d"))
    assert "requestState" not in sent


async def test_configured_roots_are_answered_by_the_guard_and_cannot_be_overridden() -> None:
    rt = trips()
    req = request()
    labels = Labels()
    out, _ = await rt.pass_on(asking(("date", ELICIT), ("roots", ROOTS)), upstream(("/srv/one",)), rt.bound(req, PLAN, "d"),
                           FORM, labels)
    assert list(out["result"]["inputRequests"]) == ["date"] and labels.seen == ["elicitation/create"]
    forged = {"roots": {"roots": [{"uri": "file:///etc"}]}, "date": {"action": "accept"}, "never-asked": {"x": 1}}
    sent = await rt.redeem({"requestState": out["result"]["requestState"], "inputResponses": forged}, rt.bound(req, PLAN, "d"))
    assert sent["inputResponses"] == {"date": {"action": "accept"}, "roots": {"roots": [{"uri": "file:///srv/one", "name": "one"}]}}


@pytest.mark.parametrize(("question", "capabilities", "roots"), [
    (SAMPLE, FORM, None),  # the host did not declare sampling
    (ROOTS, {**FORM, "roots": {}}, None),  # roots are not configured to pass: the host's own are never asked for
    (ROOTS, FORM, "pass"),  # pass, but the host did not declare roots
    ({"method": "tools/call", "params": {}}, FORM, None),  # not a question an upstream may ask
    ("not an object", FORM, None),
])
async def test_a_question_the_guard_cannot_pass_on_fails_the_call_with_one_sentence(question: Any, capabilities: dict[str, Any],
                                                                                     roots: Any) -> None:
    rt = trips()
    req = request()
    out, _ = await rt.pass_on(asking(("q", question)), upstream(roots), rt.bound(req, BOOK, "d"), capabilities, Labels())
    assert out["result"]["isError"] is True and "mcp-guard could not complete ask/book" in out["result"]["content"][0]["text"]
    assert "requestState" not in out["result"]


async def test_questions_the_guard_answers_itself_go_straight_back_to_the_upstream() -> None:
    rt = trips()
    labels = Labels()
    asked = asking(("roots", ROOTS))
    out, again = await rt.pass_on(asked, upstream("none"), rt.bound(request(), BOOK, "d"), FORM, labels)
    assert out is asked and labels.seen == []  # the host is not involved
    assert again == {"inputResponses": {"roots": {"roots": []}}, "requestState": "upstream-own-state"}


async def test_roots_pass_to_a_host_that_declared_them() -> None:
    rt = trips()
    req = request()
    out, _ = await rt.pass_on(asking(("r", ROOTS)), upstream("pass"), rt.bound(req, BOOK, "d"), {"roots": {}}, Labels())
    assert out["result"]["inputRequests"] == {"r": ROOTS}


async def test_a_question_whose_labels_cannot_be_recorded_is_not_passed_on() -> None:
    rt = trips()
    req = request()
    out, _ = await rt.pass_on(asking(("date", ELICIT)), upstream(), rt.bound(req, BOOK, "d"), FORM, Labels(ok=False))
    assert out["result"]["isError"] is True and "cannot be recorded" in out["result"]["content"][0]["text"]


async def test_an_answer_that_is_not_input_required_passes_unchanged() -> None:
    rt = trips()
    done = result(7, {"resultType": "complete", "content": []})
    assert await rt.pass_on(done, upstream(), rt.bound(request(), BOOK, "d"), FORM, Labels()) == (done, None)


async def test_a_replayed_state_is_refused() -> None:
    rt = trips()
    state = (await issued(rt))["requestState"]
    bound = rt.bound(request(), BOOK, "digest")
    await rt.redeem({"requestState": state}, bound)
    with pytest.raises(Refused, match="already used"):
        await rt.redeem({"requestState": state}, bound)


async def test_an_expired_state_is_refused() -> None:
    clock = Clock()
    rt = trips(clock)
    state = (await issued(rt))["requestState"]
    clock.now += STATE_SECONDS
    with pytest.raises(Refused, match="expired"):
        await rt.redeem({"requestState": state}, rt.bound(request(), BOOK, "digest"))


@pytest.mark.parametrize("other", [
    lambda rt: rt.bound(request(), PLAN, "digest"),  # another tool of the same upstream
    lambda rt: rt.bound(request(), BOOK, "other-arguments"),
    lambda rt: rt.bound(request(user="mallory"), BOOK, "digest"),
    lambda rt: rt.bound(request(session="s2"), BOOK, "digest"),  # run: another session of the same principal
    lambda rt: rt.bound(request(), Target("x_book", "x", "book", "x/book", {}, None), "digest"),  # another upstream
])
async def test_a_state_moved_to_another_call_is_refused_and_stays_usable_for_its_own(other: Any) -> None:
    rt = trips()
    state = (await issued(rt))["requestState"]
    with pytest.raises(Refused, match="issued for another"):
        await rt.redeem({"requestState": state}, other(rt))
    assert await rt.redeem({"requestState": state}, rt.bound(request(), BOOK, "digest"))  # not spent by the foreign try


async def test_serve_binds_to_the_principal_not_the_session() -> None:
    rt = trips(per_session=False)
    state = (await issued(rt, request(session="replica-a")))["requestState"]
    assert await rt.redeem({"requestState": state}, rt.bound(request(session="replica-b"), BOOK, "digest"))


@pytest.mark.parametrize("forge", [
    lambda s: PREFIX + "AAAA",
    lambda s: PREFIX,
    lambda s: s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB"),  # altered
    lambda s: PREFIX + "x" * 2_000_000,  # oversized
    lambda s: PREFIX + "not base64 !!",
])
async def test_a_forged_or_altered_state_is_refused(forge: Any) -> None:
    rt = trips()
    state = (await issued(rt))["requestState"]
    with pytest.raises(Refused, match="not sealed by this guard"):
        await rt.redeem({"requestState": forge(state)}, rt.bound(request(), BOOK, "digest"))


async def test_another_guards_state_does_not_open_but_a_shared_key_does() -> None:
    mine, theirs = trips(), trips()
    state = (await issued(theirs))["requestState"]
    with pytest.raises(Refused, match="not sealed"):
        await mine.redeem({"requestState": state}, mine.bound(request(), BOOK, "digest"))
    a, b = trips(state_key="k" * 40, per_session=False), trips(state_key="k" * 40, per_session=False)
    assert await b.redeem({"requestState": (await issued(a))["requestState"]}, b.bound(request(), BOOK, "digest"))


async def test_resume_audits_a_refusal_and_answers_one_sentence() -> None:
    rt = trips()
    audited: list[Any] = []

    async def audit_refused(*args: Any) -> None:
        audited.append(args)

    with pytest.raises(RpcError) as refused:
        await rt.resume(request(), BOOK, "digest", {"name": "ask_book", "requestState": PREFIX + "forged"}, audit_refused)
    assert refused.value.code == -32602 and REFUSED in refused.value.message
    (_req, _kind, name, verdict, up, qualified), = audited
    assert (name, up, qualified) == ("ask_book", "ask", "ask/book") and "not sealed by this guard" in verdict.reason
    bound, sent = await rt.resume(request(), BOOK, "digest", {"name": "ask_book"}, audit_refused)
    assert sent == {} and bound.qualified == "ask/book"


def test_the_upstream_is_told_only_what_the_guard_can_relay() -> None:
    host = {"sampling": {}, "elicitation": {"form": {}}, "roots": {"listChanged": True}, "experimental": {"x": {}}}
    assert relayable(upstream(), host) == {"sampling": {}, "elicitation": {"form": {}}}
    assert relayable(upstream("pass"), host)["roots"] == {"listChanged": True}
    assert relayable(upstream(("/srv",)), {})["roots"] == {"listChanged": False}
