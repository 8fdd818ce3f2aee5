"""What a caller changed about its handshake-era session since the handshake, kept with the
session's shared record (session_records.py) so that every replica serving the session honours it.

Two things: the log level the caller set (``logging/setLevel``) and the resources it subscribed
to (``resources/subscribe``, ``resources/unsubscribe``).  Each is recorded once the guard answered
the request with a result (a refused subscription records nothing), and brought into another
replica's guard session by replaying the requests that turn what that session has into what the
record says: under that replica's policies, audited there as any request.  When two replicas
change one session's state at the same moment the last record written wins.
"""

from __future__ import annotations

from typing import Any

from mcp_guard.jsonrpc import Message

SESSION_STATE = frozenset({"logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
REPLAY = "mcp-guard-replay:"  # the id prefix of the requests a replica replays into its own guard session
MAX_SUBSCRIPTIONS = 256  # resource URIs one session's record keeps (each replay may cost an upstream request)


def changed(state: Message, request: Message, answer: Any) -> Message | None:
    """The session's state once ``request`` was answered ``answer``; None when that changed nothing."""
    if not isinstance(answer, dict) or "result" not in answer:
        return None
    method = request.get("method")
    params = request.get("params") if isinstance(request.get("params"), dict) else {}
    assert isinstance(params, dict)
    new = dict(state)
    if method == "logging/setLevel" and isinstance(params.get("level"), str):
        new["level"] = params["level"]
    elif method in ("resources/subscribe", "resources/unsubscribe") and isinstance(params.get("uri"), str):
        uris = [u for u in state.get("subscriptions", ()) if u != params["uri"]]
        if method == "resources/subscribe" and len(uris) < MAX_SUBSCRIPTIONS:
            uris.append(params["uri"])
        new["subscriptions"] = uris
    return new if new != state else None


def replays(have: Message, want: Message) -> list[Message]:
    """The requests that turn a guard session's ``have`` state into ``want``."""
    out: list[Message] = []
    level = want.get("level")
    if isinstance(level, str) and level != have.get("level"):
        out.append({"jsonrpc": "2.0", "id": REPLAY + "level", "method": "logging/setLevel", "params": {"level": level}})
    held = [u for u in have.get("subscriptions", ()) if isinstance(u, str)]
    wanted = [u for u in want.get("subscriptions", ()) if isinstance(u, str)][:MAX_SUBSCRIPTIONS]
    for n, uri in enumerate(u for u in wanted if u not in held):
        out.append({"jsonrpc": "2.0", "id": f"{REPLAY}sub{n}", "method": "resources/subscribe", "params": {"uri": uri}})
    for n, uri in enumerate(u for u in held if u not in wanted):
        out.append({"jsonrpc": "2.0", "id": f"{REPLAY}unsub{n}", "method": "resources/unsubscribe", "params": {"uri": uri}})
    return out


__all__ = ["REPLAY", "SESSION_STATE", "changed", "replays"]
