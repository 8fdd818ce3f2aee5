"""The record template (fixed fields encoded once, a few slots filled per record) writes exactly the
bytes of the reference encoding, ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``, so the chain stays checkable with the standard library alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.audit import AuditLog, RecordTemplate, canonical, verify


def reference(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# any JSON a record may hold: unicode (control characters, non-BMP, quotes, backslashes), floats
# of every spelling (tiny exponents included), integers past 64 bits, nesting
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
keys = st.text(min_size=1, max_size=12)


@st.composite
def records(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    fixed = draw(st.dictionaries(keys, values, max_size=10))
    slots = draw(st.dictionaries(keys.filter(lambda k: k not in fixed), st.text(), max_size=7))  # 4 and 6 are spelled out
    return fixed, slots


@settings(max_examples=200, deadline=None)
@given(records())
def test_a_filled_template_is_byte_for_byte_the_reference_encoding(record: tuple[dict[str, Any], dict[str, str]]) -> None:
    fixed, slots = record
    template = RecordTemplate(fixed, list(slots))
    assert template.fill([slots[name] for name in template.slots]) == reference({**fixed, **slots})


@settings(max_examples=100, deadline=None)
@given(records(), st.lists(st.text(), min_size=5, max_size=5))
def test_one_template_serves_many_records(record: tuple[dict[str, Any], dict[str, str]], others: list[str]) -> None:
    fixed, slots = record
    template = RecordTemplate(fixed, list(slots))
    for i, text in enumerate(others):
        filled = {name: f"{text}{i}{name}" for name in slots}
        assert template.fill([filled[name] for name in template.slots]) == canonical({**fixed, **filled})


def test_the_audit_record_shape_keeps_its_sorted_order() -> None:
    """The guard's own record: slots between, before and after the fixed fields."""
    fixed = {"agent": "coder", "approver": None, "decision": "allow", "exposed": "fs_read", "grant_id": None,
             "kind": "tool", "method": "tools/call", "pid": 42, "policy_ids": ["p"], "principal": ["user:a", "agent:coder"],
             "purpose": None, "reason": "ok", "rule_ids": ["p#1"], "tool": "read", "upstream": "fs", "user": "a", "verified": False}
    slots = {"args_sha256": "ab" * 32, "prev": "0" * 64, "session": "s\u2028\"1\\", "span_id": "00f067aa0ba902b7",
             "time": "2026-05-09T07:35:25.123456Z", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    template = RecordTemplate(fixed, list(slots))
    assert template.fill([slots[name] for name in template.slots]) == reference({**fixed, **slots})
    assert RecordTemplate({}, []).fill([]) == b"{}"
    assert RecordTemplate({}, ["a"]).fill(["x"]) == b'{"a":"x"}'


@settings(max_examples=300, deadline=None)
@given(values)
def test_canonical_is_byte_for_byte_the_reference_encoding(value: Any) -> None:
    """orjson's fast path and its fallbacks (tiny floats, integers past 64 bits) give the stdlib's bytes."""
    assert canonical(value) == reference(value)


@pytest.mark.parametrize("text", ["0.00001", "1e-5", "v1e-5x", "ate-9", "e-", "0.0000", "x" * 600 + "2e-7"])
def test_strings_that_look_like_small_floats_are_encoded_as_strings(text: str) -> None:
    for value in (text, {"k": text, "n": 1e-05}, [text, 2**70]):
        assert canonical(value) == reference(value)


@pytest.mark.parametrize("count", [1, 2, 4, 5, 6, 7])
def test_every_slot_count_refuses_a_value_that_is_not_a_string(count: int) -> None:
    names = [f"s{i}" for i in range(count)]
    template = RecordTemplate({"a": 1}, names)
    good = {name: f"v{i}" for i, name in enumerate(names)}
    assert template.fill_in(good) == reference({"a": 1, **good})
    for name in names:
        with pytest.raises(TypeError, match="must be a string, not float"):
            template.fill_in({**good, name: 1e-05})  # type: ignore[dict-item]
    with pytest.raises(KeyError):
        template.fill_in({name: good[name] for name in names[1:]})


def test_a_template_refuses_what_it_cannot_encode_exactly() -> None:
    with pytest.raises(ValueError, match="named once"):
        RecordTemplate({"a": 1}, ["a"])
    template = RecordTemplate({"a": 1}, ["b"])
    with pytest.raises(TypeError, match="must be a string"):
        template.fill([1e-05])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="1 slot values expected"):
        template.fill([])


def test_a_record_from_a_template_is_the_line_a_dict_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same time, same head: ``append_filled`` and ``append`` write the same line, and both chain."""
    monkeypatch.setattr("mcp_guard.audit.log.now", lambda: "2026-05-09T07:35:25.123456Z")
    fixed = {"decision": "allow", "principal": ["user:alice", "agent:coder"], "tool": "read", "reason": "é \"ok\""}
    slots = {"args_sha256": "ab" * 32, "session": "s1"}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with AuditLog(str(a)) as by_dict, AuditLog(str(b)) as by_template:
        template = by_template.template(fixed, list(slots))
        for i in range(3):
            values = {**slots, "session": f"s{i}"}
            assert by_template.append_filled(template, values) == by_dict.append({**fixed, **values})
    assert a.read_bytes() == b.read_bytes()
    assert verify(str(b)).ok and verify(str(b)).records == 3


def test_a_template_record_is_refused_like_any_other_when_the_log_cannot_be_written(tmp_path: Path) -> None:
    from mcp_guard.errors import AuditError

    log = AuditLog("/dev/full")
    template = log.template({"decision": "allow"}, ["session"])
    with pytest.raises(AuditError, match="cannot write the audit log /dev/full"):
        log.append_filled(template, {"session": "s1"})


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_the_record_time_is_datetime_isoformat_to_the_microsecond(ns: int) -> None:
    """The stamp (its second part kept per second, the microseconds printf-formatted) is exactly
    ``datetime.isoformat(timespec="microseconds")`` in UTC with ``Z``, for any clock reading."""
    import datetime
    from unittest import mock

    from mcp_guard.audit import encoding

    micros = ns // 1000
    if micros // 1_000_000 > 253402300799:  # past 9999-12-31: no datetime to compare with
        return
    expected = (datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=micros)
                ).isoformat(timespec="microseconds").replace("+00:00", "Z")
    with mock.patch.object(encoding.time, "time_ns", return_value=ns):
        assert encoding.now() == expected
        assert encoding.now() == expected  # the second part as kept from the call before
