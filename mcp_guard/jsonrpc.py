"""JSON-RPC on the wire: parse once, build replies, and the protocol constants the guard needs.

The bottom floor: every layer (proxy, upstreams, transports, telemetry) speaks in these message
shapes, ids and error codes, so this module imports nothing of the guard's except the error tree.
Messages are plain dicts from ``orjson``; only what the guard decides on is looked at, the rest
is forwarded as it came.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

import orjson

from mcp_guard.errors import RpcError  # noqa: F401  (re-exported: the wire answer of the error tree)

Message = dict[str, Any]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNSUPPORTED_PROTOCOL_VERSION = -32022
URL_ELICITATION_REQUIRED = -32042  # 2025-11-25: the caller must have a human open a URL first
REFUSED = -32001  # mcp-guard refused a request it mediates whose answer has no error field (not tools/call)

LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
LATEST_LEGACY = "2025-11-25"
MODERN = "2026-07-28"

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
RESERVED_META_PREFIX = "io.modelcontextprotocol/"
GUARD_META_PREFIX = "dev.mcp-guard/"


# server-to-client requests an upstream may send, and the host capability each needs
SERVER_TO_CLIENT = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


# the host request an outgoing message belongs to (a log message or an upstream's question sent
# while that request is served): a transport with a stream per request sends it there
RELATED_REQUEST: ContextVar[Any] = ContextVar("related_request", default=None)


class HostTransport(Protocol):
    """Where a session's answers and notifications to its host go (stdio, HTTP, a test pair)."""

    async def send(self, message: Message) -> None: ...


class Era(enum.StrEnum):
    """The protocol era a host speaks: the handshake (2025-06-18 / 2025-11-25 ``initialize``,
    sessions, server-to-client requests) or 2026-07-28 (``server/discover``, per-request ``_meta``)."""

    LEGACY = "legacy"
    MODERN = "modern"


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def dumps(message: Message) -> bytes:
    """One line of JSON, newline-terminated (the stdio framing)."""
    return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)


def result(request_id: Any, value: Message) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: Any, code: int, message: str, data: Any = None) -> Message:
    err: Message = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": err}


def request(request_id: Any, method: str, params: Message | None = None) -> Message:
    msg: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def notification(method: str, params: Message | None = None) -> Message:
    msg: Message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def is_request(msg: Message) -> bool:
    return "method" in msg and "id" in msg and msg["id"] is not None


def is_notification(msg: Message) -> bool:
    return "method" in msg and "id" not in msg


def is_response(msg: Message) -> bool:
    return "method" not in msg and ("result" in msg or "error" in msg)


def tool_error(text: str) -> Message:
    """A ``CallToolResult`` that tells the caller (and its model) what was refused and why."""
    return {"content": [{"type": "text", "text": text}], "isError": True}


def strip_meta(params: Message | None, *, drop_reserved: bool) -> Message | None:
    """Copy of ``params`` without the guard's own ``_meta`` keys (and the host's era keys, which
    describe the host, not the guard, when ``drop_reserved``).  Returns ``params`` itself when
    there is nothing to strip, so the common case costs one dict lookup."""
    if not params:
        return params
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not meta:
        return params
    if not any(k.startswith(GUARD_META_PREFIX) or (drop_reserved and k.startswith(RESERVED_META_PREFIX)) for k in meta):
        return params
    kept = {
        k: v
        for k, v in meta.items()
        if not k.startswith(GUARD_META_PREFIX) and not (drop_reserved and k.startswith(RESERVED_META_PREFIX))
    }
    out = dict(params)
    if kept:
        out["_meta"] = kept
    else:
        del out["_meta"]
    return out


class LineSplitter:
    """Newline-delimited JSON-RPC (the stdio framing) split into lines as a pipe's bytes arrive,
    each line at most ``limit`` bytes.  A longer line is dropped and ``on_overrun`` called once;
    with ``resume`` the lines after its newline are read again (a host's stream), without it
    nothing more is (an upstream that overran is closed)."""

    __slots__ = ("_dropping", "_limit", "_on_line", "_on_overrun", "_partial", "_partial_size", "_resume")

    def __init__(self, on_line: Callable[[bytes], None], on_overrun: Callable[[], None], limit: int,
                 *, resume: bool) -> None:
        self._on_line = on_line
        self._on_overrun = on_overrun
        self._limit = limit
        self._resume = resume
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._dropping = False  # inside a line over the limit

    def feed(self, data: bytes) -> None:
        end = data.find(b"\n")
        if end == len(data) - 1 and not self._partial and not self._dropping:  # one whole line: the common case
            self._on_line(data[:end])
            return
        on_line = self._on_line
        start = 0
        while end >= 0:
            if self._dropping:
                if not self._resume:
                    return
                self._dropping = False
            elif self._partial:
                self._partial.append(data[start:end])
                line = b"".join(self._partial)
                self._partial, self._partial_size = [], 0
                on_line(line)
            else:
                on_line(data[start:end])
            start = end + 1
            end = data.find(b"\n", start)
        if start < len(data) and not self._dropping:
            self._partial.append(data[start:] if start else data)
            self._partial_size += len(data) - start
            if self._partial_size > self._limit:
                self._partial, self._partial_size = [], 0
                self._dropping = True
                self._on_overrun()

    def end(self) -> bytes | None:
        """The last line if the stream ended without its newline (None if it did not, or if that
        line was over the limit)."""
        last = b"".join(self._partial) if self._partial and not self._dropping else None
        self._partial, self._partial_size = [], 0
        return last
