"""The 2026-07-28 era's rules for one incoming request, as pure functions both faces call: ``serve``
with the HTTP headers, ``run`` without them.

The ladder itself is the SDK's (``mcp.shared.inbound``, the code its own servers run), so the guard
judges a request exactly as the reference does: ``params._meta`` must carry the protocol version and
the client capabilities (else -32602); over HTTP the ``MCP-Protocol-Version``, ``Mcp-Method`` and
(for ``tools/call``, ``prompts/get``, ``resources/read``) ``Mcp-Name`` headers must agree with the
body, each given once (else -32020); the version must be one the guard serves (else -32022 with
``data.supported``).  On top of it, the methods the era removed are unknown (-32601), before any
session or upstream sees them.  Each refusal maps to its HTTP status by the SDK's table.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from mcp_guard.jsonrpc import (
    LEGACY_VERSIONS,
    META_PROTOCOL_VERSION,
    METHOD_NOT_FOUND,
    MODERN_VERSIONS,
    Message,
    error,
)

HEADER_MISMATCH = -32020
# methods of the handshake era a 2026-07-28 request may not use: answered as unknown, never forwarded
REMOVED_METHODS = frozenset({"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a 2026-07-28 request is refused: the JSON-RPC error, and its HTTP status."""

    code: int
    message: str
    data: Any = None

    @property
    def status(self) -> int:
        return http_status(self.code)

    def answer(self, request_id: Any) -> Message:
        return error(request_id, self.code, self.message, self.data)


@functools.cache
def ladder() -> ModuleType:
    """The SDK's ladder, imported at the first 2026-07-28 request: importing any part of ``mcp``
    loads the whole SDK (client, server, HTTP stack: about a second of CPU), which a ``run`` whose
    host speaks the handshake era never needs.  ``serve`` loads it at start-up, so no caller's
    request waits for it."""
    from mcp.shared import inbound

    return inbound


def http_status(code: Any) -> int:
    """The HTTP status of a 2026-07-28 answer carrying JSON-RPC error ``code`` (200 when none is set)."""
    return ladder().ERROR_CODE_HTTP_STATUS.get(code, 200) if isinstance(code, int) else 200


def modern_header(version: str | None) -> bool:
    """An ``MCP-Protocol-Version`` header that makes an HTTP request 2026-07-28 (any value but a
    handshake version: an unknown one is the era's to refuse, as the SDK routes it)."""
    return version is not None and version not in LEGACY_VERSIONS


def check(message: Message, headers: Mapping[str, str] | None = None, raw_headers: Iterable[tuple[str, str]] = ()) -> Refusal | None:
    """The refusal of one 2026-07-28 request, or None when it may be served.  ``headers``: the HTTP
    headers by lower-case name (None on stdio); ``raw_headers``: every header line as sent, where a
    duplicated routing header shows (a folded mapping hides it)."""
    sdk = ladder()
    duplicated = sdk.find_duplicated_routing_header(raw_headers)
    if duplicated is not None:
        return Refusal(HEADER_MISMATCH, f"Header mismatch: {duplicated} is given more than once")
    verdict = sdk.classify_inbound_request(message, headers=headers, supported_modern_versions=MODERN_VERSIONS)
    if isinstance(verdict, sdk.InboundLadderRejection):
        return Refusal(verdict.code, verdict.message, verdict.data)
    method = message.get("method")
    if method in REMOVED_METHODS:
        return Refusal(METHOD_NOT_FOUND, f"Method not found: {method} (the 2026-07-28 protocol removed it)")
    return None


def modern_request(message: Message) -> bool:
    """A request that says it is 2026-07-28: ``server/discover`` (the era's own method), or its
    ``_meta`` names a protocol version (the stdio face has no header to say so)."""
    if message.get("method") == "server/discover":
        return True
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and META_PROTOCOL_VERSION in meta
