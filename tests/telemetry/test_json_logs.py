"""``--log-format json``: one JSON object a line, with the ids of the span being served."""

from __future__ import annotations

import json
import logging

import pytest

from mcp_guard.errors import ConfigError
from mcp_guard.logs import TraceJsonFormatter, log_format
from mcp_guard.telemetry import scopes


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            info = sys.exc_info()
    return logging.LogRecord("mcp_guard.http", logging.WARNING, __file__, 1, message, args, info)


def test_a_line_is_one_json_object_without_ids_outside_a_request() -> None:
    line = TraceJsonFormatter().format(_record("serving at %s:%d — \"quoted\"\nnext", "h", 1))
    assert "\n" not in line
    body = json.loads(line)
    assert body["level"] == "WARNING" and body["logger"] == "mcp_guard.http"
    assert body["message"] == 'serving at h:1 — "quoted"\nnext'
    assert body["time"].endswith("Z") and "T" in body["time"]
    assert "trace_id" not in body and "span_id" not in body


def test_a_line_inside_a_traced_request_carries_its_trace_and_span_ids() -> None:
    class Span:
        trace_id = 0x0AF7651916CD43DD8448EB211C80319C
        span_id = 0x00F067AA0BA902B7

    class Trace:
        current = Span()

    token = scopes._CURRENT.set(Trace())  # type: ignore[arg-type]
    try:
        body = json.loads(TraceJsonFormatter().format(_record("deciding")))
    finally:
        scopes._CURRENT.reset(token)
    assert (body["trace_id"], body["span_id"]) == ("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7")


def test_an_exception_stays_inside_the_one_line() -> None:
    line = TraceJsonFormatter().format(_record("failed", exc=True))
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc_info"]


def test_the_flag_wins_over_the_variable_and_nonsense_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_GUARD_LOG_FORMAT", "json")
    assert log_format(None) == "json" and log_format("text") == "text"
    monkeypatch.delenv("MCP_GUARD_LOG_FORMAT")
    assert log_format(None) == "text"
    monkeypatch.setenv("MCP_GUARD_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="log format 'xml' is not known"):
        log_format(None)
