"""A readable account of a chain: each link's claims and its verdict (``grant inspect``, ``explain``)."""

from __future__ import annotations

import json
import time
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from mcp_guard.grants.errors import GrantError
from mcp_guard.grants.jws import parse
from mcp_guard.grants.verify import MAX_LINKS, ChainVerifier, GrantChain, iso, verify_links


@dataclass(frozen=True, slots=True)
class LinkView:
    index: int
    claims: dict[str, Any] | None  # None when the link cannot even be decoded
    verdict: str  # "ok" | "rejected" | "not checked"
    detail: str = ""

    def lines(self) -> list[str]:
        c = self.claims
        if c is None:
            return [f"link {self.index}: (cannot be decoded)", f"  verdict: {self._verdict()}"]
        raw_act = c.get("act")
        act: dict[str, Any] = raw_act if isinstance(raw_act, dict) else {}
        agent = str(act.get("sub", "?")).removeprefix("agent:")
        issuer = str(c.get("iss", "?"))
        issuer = f"agent {issuer[6:]}" if issuer.startswith("agent:") else f"issuer {issuer}"
        out = [f"link {self.index}: {issuer} -> agent {agent}  (id {c.get('jti', '?')})"]
        window = []
        for name in ("nbf", "exp"):
            v = c.get(name)
            window.append(iso(v) if isinstance(v, int | float) and not isinstance(v, bool) else "?")
        depth = c.get("delegation", {}).get("max_depth", 0) if isinstance(c.get("delegation"), dict) else "?"
        out.append(f"  valid {window[0]} .. {window[1]}; may delegate {depth} more hop(s)")
        details = c.get("authorization_details")
        detail = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) else {}
        for member in ("tools", "resources", "prompts"):
            raw = detail.get(member)
            entries: dict[str, Any] = raw if isinstance(raw, dict) else {}
            parts = []
            for pattern, entry in entries.items():
                notes = []
                if isinstance(entry, dict):
                    if entry.get("approval") == "always":
                        notes.append("approval always")
                    if entry.get("max_calls") is not None:
                        notes.append(f"max_calls {entry['max_calls']}")
                    if entry.get("arguments") is not None:
                        notes.append("arguments constrained")
                parts.append(f"{pattern} ({', '.join(notes)})" if notes else str(pattern))
            out.append(f"  {member}: {', '.join(parts) or '(none)'}")
        if detail.get("max_calls") is not None:
            out.append(f"  max_calls (all tools): {detail['max_calls']}")
        for member, what in (("labels", "starts with labels"), ("label_ceiling", "label ceiling"), ("endorse", "endorses"),
                             ("endorse_sources", "endorsed sources")):
            if isinstance(detail.get(member), list):
                shown = [v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in detail[member]]
                out.append(f"  {what}: {', '.join(shown) or '(none)'}")
        out.append(f"  verdict: {self._verdict()}")
        return out

    def _verdict(self) -> str:
        return f"{self.verdict} — {self.detail}" if self.detail else self.verdict


@dataclass(frozen=True, slots=True)
class ChainReport:
    links: tuple[LinkView, ...]
    chain: GrantChain | None
    error: GrantError | None
    root_checked: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.error is None

    def render(self) -> str:
        out: list[str] = []
        for view in self.links:
            out.extend(view.lines())
        if self.error is not None:
            out.append(f"INVALID ({self.error.code}): {self.error}")
        elif self.chain is not None:
            p = self.chain.principal
            who = " -> ".join(p.chain)
            purpose = f", purpose {p.purpose}" if p.purpose else ""
            out.append(f"VALID: {who}{purpose}; expires {iso(self.chain.expires_at)}")
        out.extend(self.notes)
        return "\n".join(out)


def _decode(compact: str) -> dict[str, Any] | None:
    try:
        return parse(compact).payload
    except GrantError:
        return None


def inspect_chain(
    token: str,
    verifier: ChainVerifier | None = None,
    *,
    now: float | None = None,
    revoked: Container[str] = (),
) -> ChainReport:
    """Decode every link and verify the chain; without a verifier the root signature is not checked."""
    now = time.time() if now is None else now
    token = token.strip()
    compacts = token.split("~") if token.isascii() else []
    chain: GrantChain | None = None
    error: GrantError | None = None
    try:
        if verifier is not None:
            chain = verifier.verify(token, now)
        else:
            chain = GrantChain(verify_links(token, None, MAX_LINKS))
            error = chain.check_time(now)
        if error is None:
            error = chain.check_revoked(revoked)
    except GrantError as exc:
        error = exc
    bad = error.link_index if error is not None else None
    views = []
    for i, compact in enumerate(compacts):
        if error is None:
            verdict, detail = "ok", ""
            if i == 0 and verifier is None:
                detail = "root signature NOT checked (no trusted issuer key given)"
        elif bad is None:
            verdict, detail = "not checked", ""
        elif i < bad:
            verdict, detail = "ok", ""
        elif i == bad:
            verdict, detail = "rejected", f"{error.code}: {error}"
        else:
            verdict, detail = "not checked", ""
        views.append(LinkView(i, _decode(compact), verdict, detail))
    notes: tuple[str, ...] = ()
    if verifier is None:
        notes = ("note: the root signature was not verified; pass --config (trust.issuers) or --trust NAME=KEYFILE",)
    return ChainReport(tuple(views), chain if error is None else None, error, verifier is not None, notes)
