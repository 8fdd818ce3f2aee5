"""The guard's log lines: plain text for a terminal, or one JSON object a line for a log pipeline
(``--log-format json`` / ``MCP_GUARD_LOG_FORMAT=json``).

JSON lines are made by ``python-json-logger`` (the standard library's ``logging`` with a JSON
formatter): ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the exception when there
is one, and - for a line logged while a traced request is served - ``trace_id`` and ``span_id`` as
the W3C trace context writes them (32 and 16 lowercase hex digits), so a log line joins its trace.
Logs always go to stderr: in stdio mode stdout belongs to the MCP protocol.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from mcp_guard.errors import ConfigError

FORMATS = ("text", "json")
TEXT_FORMAT = "mcp-guard %(levelname)s %(name)s: %(message)s"
CHATTY = ("httpx2", "httpx", "httpcore", "mcp")  # one line per HTTP request is not news


class TraceJsonFormatter(JsonFormatter):
    """One JSON object per record, with the ids of the span being served when there is one.
    (The telemetry scopes are imported here: text logs start without them.)"""

    def __init__(self) -> None:
        from mcp_guard.telemetry.scopes import current_span_ids

        self._span_ids = current_span_ids
        super().__init__("%(levelname)s %(name)s %(message)s",
                         rename_fields={"levelname": "level", "name": "logger"}, json_ensure_ascii=False)

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        super().add_fields(log_record, record, message_dict)
        ids = self._span_ids()
        if ids is not None:
            log_record["trace_id"] = f"{ids[0]:032x}"
            log_record["span_id"] = f"{ids[1]:016x}"


def log_format(chosen: str | None) -> str:
    """The format asked for: the flag, else ``MCP_GUARD_LOG_FORMAT``, else text; anything else is refused."""
    name = (chosen or os.environ.get("MCP_GUARD_LOG_FORMAT") or "text").strip().lower()
    if name not in FORMATS:
        raise ConfigError(f"log format {name!r} is not known: use text or json (--log-format, MCP_GUARD_LOG_FORMAT)")
    return name


def setup_logging(level: str | None, fmt: str | None = None) -> None:
    """Configure the root logger once per process: level from ``level`` or ``MCP_GUARD_LOG_LEVEL``."""
    name = (level or os.environ.get("MCP_GUARD_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TraceJsonFormatter() if log_format(fmt) == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, name, logging.INFO), handlers=[handler])
    for chatty in CHATTY:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


__all__ = ["FORMATS", "TraceJsonFormatter", "log_format", "setup_logging"]
