"""``serve``: which caller each upstream call belongs to.

All callers of ``mcp-guard serve`` share one connection per upstream, and an upstream says nothing
about which of its in-flight requests a log message, a progress notification or a question of its
own (sampling, elicitation, roots) belongs to — except through the progress token it was given.
So every forwarded request is recorded here with the caller session that sent it, and its
``progressToken`` is replaced by one unique to the guard (two callers may both pick ``1``):

- progress goes to the caller whose token it was, under that caller's own token, and to nobody else;
- a log message or an upstream request goes to the one caller with requests in flight on that
  upstream; while several callers have, it cannot be attributed and goes to none (a request is
  refused), so nothing one principal's call causes ever reaches another principal.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp_guard.jsonrpc import Message
from mcp_guard.proxy.relay import progress_token

if TYPE_CHECKING:
    from mcp_guard.upstreams.connection import Upstream


def with_progress_token(params: Message, token: Any) -> Message:
    meta = params.get("_meta")
    return {**params, "_meta": {**(meta if isinstance(meta, dict) else {}), "progressToken": token}}


class Callers:
    """The serve hub's record of its forwarded requests; a caller is its session id."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[int, str]] = {}  # upstream name -> its request id -> caller session id
        self._tokens: dict[str, tuple[str, Any]] = {}  # token given upstream -> (caller, caller's token)
        self._ids = itertools.count(1)

    async def forward(self, caller: str, up: Upstream, method: str, params: Message | None,
                      on_id: Callable[[int], None]) -> Message:
        """``up.call`` on behalf of ``caller``: recorded while it runs, its progress token made unique."""
        token = progress_token(params) if params is not None else None
        mine: str | None = None
        if token is not None and params is not None:
            mine = f"mcp-guard-{next(self._ids)}"
            self._tokens[mine] = (caller, token)
            params = with_progress_token(params, mine)
        calls = self._calls.setdefault(up.name, {})
        ids: list[int] = []

        def note(uid: int) -> None:
            ids.append(uid)
            calls[uid] = caller
            on_id(uid)

        try:
            return await up.call(method, params, on_id=note)
        finally:
            for uid in ids:
                calls.pop(uid, None)
            if mine is not None:
                self._tokens.pop(mine, None)

    def progress(self, params: Message) -> tuple[str, Message] | None:
        """The caller a progress notification is for, and its params under that caller's token."""
        token = params.get("progressToken")
        found = self._tokens.get(token) if isinstance(token, str) else None
        if found is None:
            return None
        caller, theirs = found
        return caller, {**params, "progressToken": theirs}

    def only_caller(self, up: Upstream) -> str | None:
        """The one caller with requests in flight on ``up``; None when there is none or several."""
        callers = set(self._calls.get(up.name, {}).values())
        return next(iter(callers)) if len(callers) == 1 else None


__all__ = ["Callers", "with_progress_token"]
