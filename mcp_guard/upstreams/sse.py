"""Server-sent events as a Streamable HTTP upstream sends them: ``sse_events`` splits a
``text/event-stream`` body into events, strictly bounded (an event past the limit is refused, never
buffered on); the ids and ``retry`` of its events go to the cursor that resumes the stream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Protocol

HEADER_SAFE = re.compile(r"[\x20-\x7e]*")  # what an event id (sent back as ``Last-Event-ID``) may hold


class SseError(Exception):
    """The event stream broke its format or its size limit."""


class Cursor(Protocol):
    """Where a stream can be resumed from (``http.SseCursor``): the events' ids and ``retry`` go there."""

    last_id: str | None
    retry: float | None


async def sse_events(chunks: AsyncIterator[bytes], limit: int, cursor: Cursor | None = None) -> AsyncIterator[tuple[str, str]]:
    """``(event type, data)`` for each event of a ``text/event-stream`` body; ``id`` and ``retry`` go to
    ``cursor``, comments are dropped.  Raises ``SseError`` when one event grows past ``limit``."""
    partial: list[bytes] = []
    size = 0
    data: list[bytes] = []
    event = b""
    async for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if start < len(chunk):
                    partial.append(chunk[start:])
                    size += len(chunk) - start
                    if size > limit:
                        raise SseError(f"sent an event over the limit of {limit} bytes")
                break
            piece = chunk[start:nl]
            start = nl + 1
            if partial:
                partial.append(piece)
                line = b"".join(partial)
                partial = []
            else:
                line = piece
                size += len(piece)
                if size > limit:
                    raise SseError(f"sent an event over the limit of {limit} bytes")
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    try:
                        text = b"\n".join(data).decode()
                    except UnicodeDecodeError:
                        raise SseError("sent an event that is not UTF-8") from None
                    yield (event.decode("latin-1") or "message", text)
                data, event, size = [], b"", 0
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                value = b""
            elif value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
            elif cursor is None:
                continue
            elif name == b"id" and b"\0" not in value and HEADER_SAFE.fullmatch(value.decode("latin-1")):
                cursor.last_id = value.decode("latin-1") or None  # an empty id resets it (no resumption)
            elif name == b"retry" and value.isdigit():
                cursor.retry = int(value) / 1000
            # "" is a comment
