"""A standing fuzz target: random and mutated JSON-RPC from a host of either protocol era, driven
through a real GuardSession in front of real upstreams (the recording server and the conformance
fixture, which has prompts, resources and completions).

Properties, for every batch of messages:

- the session never raises and never logs an internal error;
- a notification (or a response from the host) is never answered;
- every request gets exactly one response, whose id is the request's id (or ``null`` when the
  request's id is not a string or a number);
- no ``-32603`` answer carries a Python exception's text (or the generic "failed to handle");
- a hidden tool is never called on the upstream.

Bounded: a fixed number of examples per era (``FUZZ_EXAMPLES``), each batch answered within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import RecordFile, conformance_server_command, recording_server_command, stdio_upstream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_harness import MODERN_META, FakeHost, guard_session

from mcp_guard.jsonrpc import is_notification, is_request, is_response

VISIBLE = ["rec/echo", "rec/read_note", "rec/list_notes"]
POLICY = [{"id": "fuzz", "rules": [{"effect": "allow", "tools": VISIBLE}]}]
TOOL_NAMES = ["rec_echo", "rec_read_note", "rec_list_notes", "rec_hang", "rec_crash", "rec_write_note", "rec_slow",
              "conf_test_simple_text", "conf_test_sampling", "nope", ""]
METHODS = [
    "initialize", "server/discover", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
    "resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "subscriptions/listen", "sampling/createMessage", "no/such/method",
]
NOTIFICATIONS = ["notifications/cancelled", "notifications/initialized", "notifications/progress",
                 "notifications/roots/list_changed", "notifications/whatever"]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "80"))  # per era; ~15 s here. FUZZ_EXAMPLES=2000 for a soak
ANSWER_WITHIN = 12.0
UPSTREAM_TIMEOUT = "4s"  # an upstream that drops a malformed request is answered for within this

# JSON values as a transport delivers them: 64-bit integers, finite floats, valid Unicode
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), _text)
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_text, inner, max_size=4)), max_leaves=12)


@st.composite
def _deep(draw: st.DrawFn) -> Any:
    """A value nested far deeper than ordinary messages (the transport's parser accepts 1024 levels)."""
    depth = draw(st.integers(200, 1000))
    value: Any = draw(_scalar)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


_value = st.one_of(_json, _json, _json, _deep(), st.text(max_size=5000).filter(lambda s: "\ud800" not in s))
_id = st.one_of(st.integers(-(2**63), 2**63 - 1), _text, st.floats(allow_nan=False, allow_infinity=False),
                st.none(), st.booleans(), st.lists(_scalar, max_size=2), st.dictionaries(_text, _scalar, max_size=2))


def _shaped_params(method: str) -> st.SearchStrategy[Any]:
    """Params that look like the method's own, with every field possibly of the wrong type."""
    name = st.one_of(st.sampled_from(TOOL_NAMES), _value)
    shapes: dict[str, st.SearchStrategy[Any]] = {
        "tools/call": st.fixed_dictionaries({"name": name}, optional={"arguments": st.one_of(st.just({"text": "x"}), _value),
                                                                      "requestState": _value, "inputResponses": _value}),
        "tools/list": st.fixed_dictionaries({}, optional={"cursor": _value}),
        "prompts/get": st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["conf_test_simple_prompt", "x"]), _value)},
                                             optional={"arguments": _value}),
        "completion/complete": st.fixed_dictionaries({"ref": st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["ref/prompt", "ref/resource", "x"]), "name": _value, "uri": _value}),
            _value)}, optional={"argument": _value}),
        "resources/read": st.fixed_dictionaries({"uri": st.one_of(st.just("test://static-text"), _value)}),
        "logging/setLevel": st.fixed_dictionaries({"level": st.one_of(st.just("info"), _value)}),
        "notifications/cancelled": st.fixed_dictionaries({"requestId": _id}, optional={"reason": _value}),
        "initialize": st.fixed_dictionaries({"protocolVersion": st.one_of(st.just("2025-11-25"), _value)},
                                            optional={"capabilities": _value, "clientInfo": _value}),
    }
    return st.one_of(shapes.get(method, st.dictionaries(_text, _value, max_size=3)), _value)


@st.composite
def _message(draw: st.DrawFn, modern: bool) -> Any:
    kind = draw(st.sampled_from(["request"] * 6 + ["notification"] * 3 + ["response", "garbage"]))
    if kind == "garbage":
        return draw(st.one_of(_value, st.dictionaries(st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]),
                                                      _value, max_size=4)))
    if kind == "response":
        body = draw(st.sampled_from(["result", "error"]))
        return {"jsonrpc": "2.0", "id": draw(_id), body: draw(_value)}
    method = draw(st.one_of(st.sampled_from(NOTIFICATIONS if kind == "notification" else METHODS), _text))
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if kind == "request":
        message["id"] = draw(_id)
    if draw(st.integers(0, 9)) > 0:
        params = draw(_shaped_params(method))
        if modern and isinstance(params, dict) and draw(st.booleans()):
            params = {**params, "_meta": dict(MODERN_META)}
        message["params"] = params
    return message


def _key(rid: Any) -> tuple[str, Any]:
    """Ids the guard cannot tell apart (1 and 1.0) count as one."""
    return ("n", float(rid)) if isinstance(rid, int | float) and not isinstance(rid, bool) else ("s", rid)


def _valid_id(rid: Any) -> bool:
    return isinstance(rid, str | int | float) and not isinstance(rid, bool)


_EXCEPTION_TEXT = re.compile(r"Traceback|Error\(|(Type|Key|Attribute|Value|Index|Assertion|Runtime|Recursion)Error|"
                             r"object has no attribute|not subscriptable|unhashable|failed to handle")


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("mcp_guard") and not record.name.startswith("mcp_guard.upstream"):
            self.records.append(record.getMessage())


async def _exercise(host: FakeHost, batch: list[Any], record_file: RecordFile) -> None:
    assert host.session is not None
    host.pending()  # what the guard said between batches (notifications) is not this batch's
    requests: dict[tuple[str, Any], Any] = {}
    invalid = 0  # messages that can only be answered with a null id
    cancelled: set[tuple[str, Any]] = set()
    sent: list[Any] = []
    for message in batch:
        if not isinstance(message, dict) or ("id" in message and message["id"] is not None and not _valid_id(message["id"])):
            invalid += 1  # no id to answer with
        elif is_request(message) or not (is_notification(message) or is_response(message) or "id" not in message):
            # a request, or something with an id that is neither request nor response: Invalid Request
            if message["id"] is None:
                invalid += 1
            elif _key(message["id"]) in requests:
                continue  # one request per id at a time (a host reusing a live id is its own problem)
            else:
                requests[_key(message["id"])] = message
        if isinstance(message, dict) and message.get("method") == "notifications/cancelled" and "id" not in message:
            params = message.get("params")
            if isinstance(params, dict) and _valid_id(params.get("requestId")):
                cancelled.add(_key(params["requestId"]))
        sent.append(message)
        await host.session.handle(message)  # must never raise

    answers: dict[tuple[str, Any], int] = {}
    nulls = 0
    expected = {k for k in requests if k not in cancelled}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ANSWER_WITHIN
    while True:
        if all(k in answers for k in expected) and nulls >= invalid:
            inflight = [t for t in host.session.inflight.tasks.values() if not t.done()]
            if inflight:  # answered, or cancelled and never to be answered: let them end
                await asyncio.wait(inflight, timeout=max(0.01, deadline - loop.time()))
            await asyncio.sleep(0.02)  # let any stray extra answer arrive
            if host.sent.empty():
                break
        try:
            out = await asyncio.wait_for(host.sent.get(), max(0.01, deadline - loop.time()))
        except TimeoutError:
            missing = [requests[k] for k in expected if k not in answers]
            raise AssertionError(f"no answer within {ANSWER_WITHIN}s to {str(missing)[:2000]} (nulls {nulls}/{invalid})") from None
        if "method" in out:
            continue  # a notification or a request from the guard (relayed from an upstream)
        rid = out.get("id")
        assert ("result" in out) != ("error" in out), out
        if "error" in out:
            err = out["error"]
            assert isinstance(err.get("code"), int) and isinstance(err.get("message"), str), out
            if err["code"] == -32603:
                assert not _EXCEPTION_TEXT.search(err["message"]), f"internal error leaked for {str(sent)[:1500]}: {out}"
        if rid is None:
            nulls += 1
            assert nulls <= invalid, f"an unexpected null-id answer {out} to {str(sent)[:1500]}"
            continue
        key = _key(rid)
        assert key in requests, f"an answer to something that was not a request: {out} (sent {str(sent)[:1500]})"
        answers[key] = answers.get(key, 0) + 1
        assert answers[key] == 1, f"answered twice: {out}"
    called = set(record_file.tools_called())
    assert called <= {v.split("/")[1] for v in VISIBLE}, f"a hidden tool reached the upstream: {called}"


@pytest.fixture
def error_log() -> Iterator[_Errors]:
    handler = _Errors()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_the_wire_survives_random_and_mutated_messages(era: str, tmp_path: Path, record_file: RecordFile,
                                                       error_log: _Errors) -> None:
    modern = era == "modern"
    upstreams = {"rec": stdio_upstream(recording_server_command(), env=record_file.env(), timeout=UPSTREAM_TIMEOUT),
                 "conf": stdio_upstream(conformance_server_command(), timeout=UPSTREAM_TIMEOUT)}
    loop = asyncio.new_event_loop()
    context = guard_session(tmp_path, upstreams, POLICY)
    host = loop.run_until_complete(context.__aenter__())
    try:
        loop.run_until_complete(host.discover() if modern else host.initialize())

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
        @given(st.lists(_message(modern), min_size=1, max_size=6))
        def check(batch: list[Any]) -> None:
            loop.run_until_complete(_exercise(host, batch, record_file))
            assert error_log.records == [], error_log.records

        check()
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()
