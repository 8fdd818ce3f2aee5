"""The guard's own pages of a list toward the host: every list is aggregated from the upstreams and
then paginated by the guard, with a ``cursor`` only the guard reads (an offset, never an
upstream's cursor)."""

from __future__ import annotations

import base64
from typing import Any

from mcp_guard.errors import RpcError
from mcp_guard.jsonrpc import INVALID_PARAMS, Era, Message

PAGE_SIZE = 1000  # items per list page toward the host


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"mcp-guard:{offset}".encode()).decode()


def decode_cursor(cursor: Any) -> int:
    try:
        text = base64.urlsafe_b64decode(str(cursor).encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix == "mcp-guard" and number.isdigit():
            return int(number)
    except (ValueError, UnicodeDecodeError):
        pass
    raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor")


def page(params: Message, key: str, items: list[Any], era: Era | None) -> Message:
    """One page of the guard's own list (``cursor`` = an offset only the guard reads)."""
    cursor = params.get("cursor")
    offset = decode_cursor(cursor) if cursor is not None else 0
    out: Message = {key: items[offset : offset + PAGE_SIZE]}
    if offset + PAGE_SIZE < len(items):
        out["nextCursor"] = encode_cursor(offset + PAGE_SIZE)
    if era == Era.MODERN:
        out["ttlMs"] = 0
        out["cacheScope"] = "private"
    return out


__all__ = ["PAGE_SIZE", "decode_cursor", "encode_cursor", "page"]
