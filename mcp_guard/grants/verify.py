"""Chain verification (once per token, cached) and call-time enforcement (every call, cheap).

Pure: no I/O, no clock — ``now`` is passed in, revocations are looked up by the caller.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mcp_guard.grants import errors as E
from mcp_guard.grants.errors import GrantError
from mcp_guard.grants.fastschema import PATHS
from mcp_guard.grants.flow import Effective, effective
from mcp_guard.grants.jws import parse
from mcp_guard.grants.keys import b64url_encode, thumbprint
from mcp_guard.grants.model import (
    AGENT_PREFIX,
    MEMBER,
    Budget,
    CallCheck,
    Link,
    ToolEntry,
    covers,
    parse_link,
)
from mcp_guard.identity import Principal
from mcp_guard.kinds import Kind
from mcp_guard.paths import PathContext

MAX_LINKS = 8
MAX_BYTES = 16 * 1024
NBF_LEEWAY = 30.0  # clock skew between the issuer's machine and the guard's
_TOOL = Kind.TOOL  # read per call: a global (a member read through its class is the enum metaclass's slow hook on 3.11)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def link_hash(compact: str) -> str:
    return b64url_encode(hashlib.sha256(compact.encode("ascii")).digest())


# --------------------------------------------------------------------------- invariants


def check_binding(parent: Link, child: Link) -> None:
    """The child names exactly this parent and continues its actor chain (no reordering, no splicing)."""
    if child.parent_hash != link_hash(parent.compact) or child.parent_jti != parent.jti:
        raise GrantError(E.PARENT_HASH_MISMATCH, f"link {child.index} does not name link {parent.index} as its parent (parent_hash/parent_jti)")
    if child.iss != AGENT_PREFIX + parent.agent:
        raise GrantError(E.ISSUER_MISMATCH, f"link {child.index} must be issued by agent:{parent.agent}, the holder of link {parent.index}")
    if child.act.get("act") != parent.act:
        raise GrantError(E.ACTOR_MISMATCH, f"link {child.index}'s actor chain (act.act) does not continue link {parent.index}'s")


def check_narrowing(parent: Link, child: Link) -> None:
    """Every attenuation invariant of docs/grants.md (a child link only narrows); messages start with the offending field for ``delegate``."""
    where = f"link {child.index}"
    if child.user != parent.user:
        raise GrantError(E.USER_CHANGED, f"sub: {where} changes the user from {parent.user} to {child.user}")
    if child.aud != parent.aud:
        raise GrantError(E.AUDIENCE_MISMATCH, f"aud: {where} changes the audience")
    if child.purpose != parent.purpose:
        raise GrantError(E.PURPOSE_CHANGED, f"purpose: {where} changes the purpose from {parent.purpose!r} to {child.purpose!r}")
    if child.exp > parent.exp:
        raise GrantError(E.EXPIRY_EXTENDED, f"exp: {where} expires at {iso(child.exp)}, after its parent ({iso(parent.exp)})")
    if child.nbf < parent.nbf:
        raise GrantError(E.STARTS_EARLIER, f"nbf: {where} becomes valid before its parent does")
    if parent.max_depth < 1:
        raise GrantError(E.DEPTH_NOT_DECREASING, f"depth: link {parent.index} (agent {parent.agent}) may not delegate further")
    if child.max_depth > parent.max_depth - 1:
        raise GrantError(E.DEPTH_NOT_DECREASING, f"depth: {where} allows {child.max_depth} more hops; at most {parent.max_depth - 1} remain")
    for kind in Kind:
        for entry in child.of(kind):
            check_entry(parent, entry, where, kind)
    if parent.max_calls is not None and (child.max_calls is None or child.max_calls > parent.max_calls):
        raise GrantError(E.BUDGET_RAISED, f"max_calls: {where} allows {_n(child.max_calls)} calls; its parent allows {parent.max_calls}")


def _n(limit: int | None) -> str:
    return "unlimited" if limit is None else str(limit)


def check_entry(parent: Link, entry: ToolEntry, where: str, kind: Kind = Kind.TOOL) -> None:
    member = MEMBER[kind]
    covering = [p for p in parent.of(kind) if covers(p.pattern, entry.pattern, kind)]
    if not covering:
        raise GrantError(E.WIDENED_TOOLS, f"{member}: {entry.pattern} is not within the {member} of link {parent.index} (agent {parent.agent})")
    for p in covering:
        if p.approval == "always" and entry.approval != "always":
            raise GrantError(E.APPROVAL_RELAXED, f"approval: {where} drops the human approval link {parent.index} requires for {entry.pattern}")
        if p.max_calls is not None and (entry.max_calls is None or entry.max_calls > p.max_calls):
            raise GrantError(E.BUDGET_RAISED, f"max_calls: {where} allows {_n(entry.max_calls)} calls of {entry.pattern}; link {parent.index} allows {p.max_calls}")


# --------------------------------------------------------------------------- structural verification

RootKey = Callable[[Link], tuple[Ed25519PublicKey, str]]


def split_chain(token: str, max_links: int) -> list[str]:
    if not isinstance(token, str) or not token.isascii():
        raise GrantError(E.MALFORMED, "the grant chain is not an ASCII string")
    if len(token) > MAX_BYTES:
        raise GrantError(E.TOO_LARGE, f"the grant chain is {len(token)} bytes; at most {MAX_BYTES} are accepted")
    parts = token.strip().split("~")
    if len(parts) > max_links:
        raise GrantError(E.TOO_MANY_LINKS, f"the grant chain has {len(parts)} links; at most {max_links} are accepted")
    if any(not p for p in parts):
        raise GrantError(E.MALFORMED, "the grant chain has an empty link (links are joined by a single ~)")
    return parts


def verify_links(token: str, root_key: RootKey | None, max_links: int) -> tuple[Link, ...]:
    """Signatures and invariants of every link.  ``root_key=None`` skips only the root signature
    (``delegate`` and key-less ``inspect``, which have no trust store)."""
    links: list[Link] = []
    seen: set[str] = set()
    flow = Effective()
    for index, compact in enumerate(split_chain(token, max_links)):
        try:
            jws = parse(compact)
            link = parse_link(index, compact, jws.payload)
            if link.jti in seen:
                raise GrantError(E.MALFORMED, f"link {index} repeats the id {link.jti}")
            seen.add(link.jti)
            if index == 0:
                if root_key is not None:
                    jws.verify(*root_key(link))
            else:
                parent = links[-1]
                if parent.holder_key is None or parent.holder_kid is None:
                    raise GrantError(E.DEPTH_NOT_DECREASING, f"link {parent.index} (agent {parent.agent}) may not delegate further")
                jws.verify(parent.holder_key, parent.holder_kid)
                check_binding(parent, link)
                check_narrowing(parent, link)
            flow = flow.then(link.flow, f"link {index}", root=index == 0)
        except GrantError as exc:
            raise exc.at(index) from None
        links.append(link)
    return tuple(links)


# --------------------------------------------------------------------------- the verified chain


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything check_call needs for one tool name, computed once per (chain, tool)."""

    missing: Link | None
    approval: bool
    validators: tuple[tuple[Link, ToolEntry], ...]
    budgets: tuple[Budget, ...]


_PERMITTED = {False: CallCheck(True, False), True: CallCheck(True, True)}  # immutable: one of each, not one per call


class GrantChain:
    """A verified chain.  Immutable; call-time answers are cached per tool name."""

    __slots__ = ("_plans", "expires_at", "flow", "link_ids", "links", "not_before", "principal")
    _plans: dict[str | tuple[Kind, str], _Plan]

    _MAX_PLANS = 1024

    def __init__(self, links: tuple[Link, ...]) -> None:
        self.links = links
        self.link_ids: tuple[str, ...] = tuple(link.jti for link in links)
        self.expires_at: float = min(link.exp for link in links)
        self.not_before: float = max(link.nbf for link in links)
        root, leaf = links[0], links[-1]
        self.principal = Principal(
            user=root.user,
            agents=tuple(link.agent for link in links),
            purpose=root.purpose,
            verified=True,
            grant_id=leaf.jti,
            link_ids=self.link_ids,
        )
        self._plans = {}
        self.flow: Effective = effective([link.flow for link in links])  # verified on the way in

    def __repr__(self) -> str:
        return f"GrantChain({' -> '.join(self.principal.chain)}, links={list(self.link_ids)})"

    def check_time(self, now: float, leeway: float = NBF_LEEWAY) -> GrantError | None:
        if now >= self.expires_at:
            link = min(self.links, key=lambda lk: lk.exp)
            return GrantError(E.EXPIRED, f"the grant chain expired at {iso(self.expires_at)} ({link.label})", link.index)
        if now + leeway < self.not_before:
            link = max(self.links, key=lambda lk: lk.nbf)
            return GrantError(E.NOT_YET_VALID, f"the grant chain is not valid before {iso(self.not_before)} ({link.label})", link.index)
        return None

    def check_revoked(self, revoked: Container[str]) -> GrantError | None:
        """Revoking a link revokes everything delegated from it: any revoked id denies the chain."""
        for link in self.links:
            if link.jti in revoked:
                return GrantError(E.REVOKED, f"grant {link.jti} ({link.label}) has been revoked", link.index)
        return None

    def _plan(self, tool: str, kind: Kind = Kind.TOOL) -> _Plan:
        key: str | tuple[Kind, str] = tool if kind is _TOOL else (kind, tool)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        missing: Link | None = None
        approval = False
        validators: list[tuple[Link, ToolEntry]] = []
        budgets: list[Budget] = []
        prefix = "tool" if kind is _TOOL else str(kind)
        for link in self.links:
            entries = link.entries(kind, tool)
            if not entries:
                missing = link
                break
            for e in entries:
                approval = approval or e.approval == "always"
                if e.validator is not None:
                    validators.append((link, e))
                if e.max_calls is not None:
                    budgets.append(Budget(f"grant:{link.jti}:{prefix}:{e.pattern}", e.max_calls, link.exp))
            if link.max_calls is not None:
                budgets.append(Budget(f"grant:{link.jti}:calls", link.max_calls, link.exp))
        plan = _Plan(missing, approval, tuple(validators), tuple(budgets) if missing is None else ())
        if len(self._plans) < self._MAX_PLANS:
            self._plans[key] = plan
        return plan

    def permits(self, kind: Kind, name: str) -> bool:
        """Discovery: every link lists ``name`` (ignoring argument constraints).  A link without
        ``resources`` or ``prompts`` entries permits no resource or prompt."""
        return self._plan(name, kind).missing is None

    def permits_tool(self, tool: str) -> bool:
        """Discovery: every link lists the tool (ignoring argument constraints)."""
        return self._plan(tool).missing is None

    def check_call(self, tool: str, args: Mapping[str, Any] | None, kind: Kind = Kind.TOOL, *,
                   paths: PathContext | None = None) -> CallCheck:
        """Whether every link permits this request (``tool`` is ``UPSTREAM/URI`` for a resource);
        ``paths`` places relative paths for the ``x-under`` argument constraint."""
        plan = self._plan(tool, kind)
        what = tool if kind is _TOOL else f"{kind} {tool}"
        if plan.missing is not None:
            link = plan.missing
            return CallCheck(False, False, f"the grant of agent {link.agent} does not include {what}", link.index, E.TOOL_NOT_GRANTED)
        if plan.validators:
            instance = dict(args) if args is not None else {}
            token = PATHS.set(paths) if paths is not None else None
            try:
                for link, entry in plan.validators:
                    problem = _arguments_problem(entry, instance)
                    if problem is not None:
                        reason = f"{problem} required by the grant of agent {link.agent} for {what}"
                        return CallCheck(False, plan.approval, reason, link.index, E.ARGUMENTS_NOT_PERMITTED)
            finally:
                if token is not None:
                    PATHS.reset(token)
        return _PERMITTED[plan.approval]

    def budgets(self, tool: str, kind: Kind = Kind.TOOL) -> tuple[Budget, ...]:
        return self._plan(tool, kind).budgets

    def explain_call(self, tool: str, args: Mapping[str, Any] | None, kind: Kind = Kind.TOOL, *,
                     paths: PathContext | None = None) -> list[str]:
        """One verdict line per link, without short-circuit (for ``explain``); never shows argument values."""
        instance = dict(args) if args is not None else {}
        member = MEMBER[kind]
        what = tool if kind is Kind.TOOL else f"{kind} {tool}"
        lines = []
        token = PATHS.set(paths) if paths is not None else None
        try:
            for link in self.links:
                head = f"link {link.index} ({link.iss} -> agent {link.agent}, id {link.jti})"
                entries = link.entries(kind, tool)
                if not entries:
                    lines.append(f"{head}: refuses: {what} is not among its {member}")
                    continue
                problems = [p for e in entries if e.validator is not None and (p := _arguments_problem(e, instance))]
                notes = [f"via {', '.join(e.pattern for e in entries)}"]
                if any(e.approval == "always" for e in entries):
                    notes.append("needs approval")
                notes += [f"max_calls {e.max_calls} for {e.pattern}" for e in entries if e.max_calls is not None]
                if link.max_calls is not None:
                    notes.append(f"max_calls {link.max_calls} for the link")
                verdict = f"refuses: {problems[0]}" if problems else "permits"
                lines.append(f"{head}: {verdict} ({'; '.join(notes)})")
        finally:
            if token is not None:
                PATHS.reset(token)
        return lines


def _arguments_problem(entry: ToolEntry, instance: dict[str, Any]) -> str | None:
    """None if the arguments satisfy the schema; else a description naming paths, never values."""
    compiled = entry.validator
    assert compiled is not None
    try:
        if compiled.is_valid(instance):
            return None
        error = next(iter(compiled.validator.iter_errors(instance)), None)
    except Exception:  # unresolvable $ref, recursion: fail closed
        return "arguments that can be checked against the schema are"
    if error is None:  # pragma: no cover - the fast checker and jsonschema disagree: refuse anyway
        return "arguments that pass the argument schema are"
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"args{path} fails the `{error.validator}` constraint"


# --------------------------------------------------------------------------- the verifier


class ChainVerifier:
    """Verifies chains against the configured issuers and audience; results cached per token."""

    def __init__(
        self,
        issuers: Mapping[str, Ed25519PublicKey],
        audience: str,
        max_links: int = MAX_LINKS,
        *,
        cache_size: int = 256,
        nbf_leeway: float = NBF_LEEWAY,
        also: tuple[str, ...] = (),
    ) -> None:
        """``also``: further audiences a root may name (``serve`` accepts its own ``serve.url``)."""
        for name, key in issuers.items():
            if not isinstance(key, Ed25519PublicKey):
                raise GrantError(E.BAD_KEY, f"the key of issuer {name} is not an Ed25519 public key")
        self._issuers = {name: (key, thumbprint(key)) for name, key in issuers.items()}
        self.audience = audience
        self.audiences = frozenset((audience, *also))
        self.max_links = min(max_links, MAX_LINKS)
        self.nbf_leeway = nbf_leeway
        self._cache: OrderedDict[str, GrantChain | GrantError] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _root_key(self, link: Link) -> tuple[Ed25519PublicKey, str]:
        entry = self._issuers.get(link.iss)
        if entry is None:
            raise GrantError(E.UNTRUSTED_ISSUER, f"the root grant's issuer {link.iss!r} is not in trust.issuers")
        if link.aud not in self.audiences:
            raise GrantError(E.AUDIENCE_MISMATCH, f"the root grant is for audience {link.aud!r}, not this guard ({self.audience})")
        return entry

    def verify_structure(self, token: str) -> GrantChain:
        """Signatures and invariants, without the clock (cached, including failures)."""
        with self._lock:
            hit = self._cache.get(token)
            if hit is not None:
                self._cache.move_to_end(token)
        if hit is None:
            try:
                hit = GrantChain(verify_links(token, self._root_key, self.max_links))
            except GrantError as exc:
                hit = exc
            if len(token) <= MAX_BYTES:  # never let oversize junk occupy the cache
                with self._lock:
                    self._cache[token] = hit
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        if isinstance(hit, GrantError):
            raise GrantError(hit.code, str(hit), hit.link_index)
        return hit

    def verify(self, token: str, now: float) -> GrantChain:
        chain = self.verify_structure(token)
        problem = chain.check_time(now, self.nbf_leeway)
        if problem is not None:
            raise problem
        return chain
