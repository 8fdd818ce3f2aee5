"""The host's side of the protocol: which era it speaks, what it declared, and what the guard answers
to ``initialize`` / ``server/discover`` (its own capabilities: the union of the upstreams').

Both eras on the host face: the handshake (2025-06-18 / 2025-11-25: ``initialize``, a session,
server-to-client requests) and 2026-07-28 (``server/discover``, everything per request in
``params._meta``, ``resultType`` on every result).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcp_guard import __version__
from mcp_guard.jsonrpc import (
    INTERNAL_ERROR,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    MODERN,
    Era,
    Message,
    error,
)
from mcp_guard.proxy.roundtrip import RELAYED_TO_CALLERS, relayable

if TYPE_CHECKING:
    from mcp_guard.upstreams.connection import Upstream

SERVER_INFO = {"name": "mcp-guard", "version": __version__}
_MODERN = Era.MODERN  # read per call: a global (``Era.MODERN`` is an enum metaclass hook on 3.11)
CACHEABLE = frozenset(
    {"server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)  # 2026-07-28 results that must carry ttlMs + cacheScope


@dataclass
class HostProfile:
    """What one host session said about itself: era, protocol version, client info, capabilities."""

    era: Era | None = None
    protocol_version: str = LATEST_LEGACY
    client_info: Message = field(default_factory=dict)
    client_capabilities: Message = field(default_factory=dict)

    def note(self, message: Message) -> None:
        """A request carrying the 2026-07-28 ``_meta`` keys makes the session modern."""
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get(META_PROTOCOL_VERSION), str) and message.get("method") != "initialize":
            self.era = Era.MODERN
            self.protocol_version = meta[META_PROTOCOL_VERSION]
            if not self.client_info and isinstance(meta.get(META_CLIENT_INFO), dict):
                self.client_info = meta[META_CLIENT_INFO]
            if not self.client_capabilities and isinstance(meta.get(META_CLIENT_CAPABILITIES), dict):
                self.client_capabilities = meta[META_CLIENT_CAPABILITIES]

    def request_capabilities(self, message: Message) -> Message:
        """2026-07-28: the capabilities this very request declares (else the session's)."""
        if self.era != _MODERN:
            return self.client_capabilities
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        caps = meta.get(META_CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
        return caps if isinstance(caps, dict) else self.client_capabilities

    def initialize(self, params: Message) -> None:
        self.era = Era.LEGACY
        requested = params.get("protocolVersion")
        self.protocol_version = requested if requested in LEGACY_VERSIONS else LATEST_LEGACY
        info, caps = params.get("clientInfo"), params.get("capabilities")
        self.client_info = info if isinstance(info, dict) else {}
        self.client_capabilities = caps if isinstance(caps, dict) else {}

    def initialize_result(self, upstreams: Iterable[Upstream]) -> Message:
        ups = list(upstreams)
        out: Message = {"protocolVersion": self.protocol_version, "capabilities": merged_capabilities(ups), "serverInfo": SERVER_INFO}
        if text := instructions(ups):
            out["instructions"] = text
        return out

    @staticmethod
    def discover_result(upstreams: Iterable[Upstream]) -> Message:
        ups = list(upstreams)
        out: Message = {
            "supportedVersions": [MODERN, *reversed(LEGACY_VERSIONS)],
            "capabilities": merged_capabilities(ups),
            "_meta": {META_SERVER_INFO: SERVER_INFO},
            "ttlMs": 0,
            "cacheScope": "private",
        }
        if text := instructions(ups):
            out["instructions"] = text
        return out

    def upstream_capabilities(self, up: Upstream) -> Message:
        """What the guard tells an upstream it can do: only what it can actually relay or answer.  A
        2026-07-28 host declares its capabilities per request, so the upstream is told all the guard
        can relay and each question is checked against the request waiting (``proxy/relay.py``)."""
        return relayable(up, RELAYED_TO_CALLERS if self.era == Era.MODERN else self.client_capabilities)

    def shape(self, method: str, response: Message) -> Message:
        """Fit a result to the host's era: 2026-07-28 fields added for a modern host, removed for a
        handshake-era one (an upstream's ``input_required`` cannot be relayed to it)."""
        out = response.get("result")
        if not isinstance(out, dict):
            return response
        if self.era != _MODERN:
            if "resultType" in out:  # from a 2026-07-28 upstream to a handshake-era host
                if out.get("resultType") == "input_required":
                    return error(response.get("id"), INTERNAL_ERROR,
                                 f"the upstream asked for more input to answer {method}, which mcp-guard does not relay yet")
                for key in ("resultType", "ttlMs", "cacheScope"):
                    out.pop(key, None)
            return response
        out.setdefault("resultType", "complete")
        if method in CACHEABLE and out["resultType"] == "complete":
            # answers may vary by principal, so they are never shared between callers
            out.setdefault("ttlMs", 0)
            out.setdefault("cacheScope", "private")
        return response


def merged_capabilities(upstreams: Iterable[Upstream]) -> Message:
    caps: Message = {"tools": {"listChanged": True}}
    for up in upstreams:
        uc = up.capabilities
        if "resources" in uc:
            r = caps.setdefault("resources", {})
            for flag in ("subscribe", "listChanged"):
                if isinstance(uc["resources"], dict) and uc["resources"].get(flag):
                    r[flag] = True
        if "prompts" in uc:
            p = caps.setdefault("prompts", {})
            if isinstance(uc["prompts"], dict) and uc["prompts"].get("listChanged"):
                p["listChanged"] = True
        for simple in ("completions", "logging"):
            if simple in uc:
                caps[simple] = {}
    return caps


def instructions(upstreams: Iterable[Upstream]) -> str | None:
    parts = [f"[{up.name}] {up.instructions}" for up in upstreams if up.instructions]
    return "\n\n".join(parts) if parts else None


__all__ = ["CACHEABLE", "HostProfile", "instructions", "merged_capabilities"]
