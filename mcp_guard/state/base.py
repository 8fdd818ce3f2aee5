"""The state store interface shared by every backend, and the helpers they have in common."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

RATE_WINDOW = 60.0
"""Rate limits count allowed calls in a sliding window of this many seconds ending now."""

APPROVAL_POLL = 0.1
"""How often ``approval_wait`` looks for an answer (seconds)."""

APPROVAL_RETENTION = 7 * 86400.0
"""Resolved approval records are kept this long, then garbage-collected."""

FLOW_TTL = 86400.0
"""A session's flow state (labels and kept content) is forgotten this long after its last use."""

PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"
ABANDONED = "abandoned"
"""Nobody waits for the answer any more (the call was cancelled, or its guard drained): never approvable."""


@dataclass(frozen=True, slots=True)
class Counter:
    """One budget to draw a call from: at most ``limit`` calls on ``key`` until ``expires_at``.

    After ``expires_at`` (epoch seconds) the counter is gone and starts again from zero; ``None``
    keeps it for as long as the store keeps data.
    """

    key: str
    limit: int
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class LabelOrigin:
    """Why a session holds a label: the first forwarded request that brought it.

    ``source`` names the request's target as the audit does (``fs/read_text_file``, ``upstream crm``);
    ``record`` is that request's audit record number when it was audited, so a refusal can say
    "this session holds `private` since fs/read_text_file, audit record 17".
    """

    label: str
    source: str
    record: int | None = None


@dataclass(frozen=True, slots=True)
class FlowPiece:
    """Content that brought ``labels`` into a session: what ``carries`` compares arguments with."""

    labels: frozenset[str]
    text: str


@dataclass(frozen=True, slots=True)
class SessionFlow:
    """A session's information-flow state, as the store holds it (labels only ever grow).

    ``overflow`` is set once the kept content passed the session's bound: ``carries`` can then no
    longer be judged and fails closed. ``version`` grows with every change, so a compiled content
    index can be cached per (scope, version).
    """

    labels: Mapping[str, LabelOrigin]
    pieces: tuple[FlowPiece, ...] = ()
    content_bytes: int = 0
    overflow: bool = False
    version: int = 0


@runtime_checkable
class StateStore(Protocol):
    """Budgets, rate limits, revocations and the approval queue; every method may raise StateError."""

    url: str

    async def consume(self, counters: Sequence[Counter]) -> str | None:
        """All or nothing: count one call on every counter if each is below its limit and return
        None; otherwise count nothing and return the key of the first exhausted counter."""
        ...

    async def rate(self, key: str, per_minute: int, now: float | None = None) -> bool:
        """True (and counted) if fewer than ``per_minute`` calls were allowed on ``key`` in the
        last 60 seconds; False (not counted) otherwise."""
        ...

    async def value_set(self, key: str, value: str, expires_at: float) -> None:
        """Store ``value`` under ``key`` (replacing any) until ``expires_at`` (epoch seconds): a direct
        lookup, e.g. from an approval request's binding to its id, instead of a scan."""
        ...

    async def value_get(self, key: str) -> str | None:
        """The value last set on ``key``, or None if there is none or it expired."""
        ...

    async def revoke(self, jti: str, reason: str | None = None) -> None: ...

    async def revoked(self, jtis: Sequence[str]) -> str | None:
        """The first of ``jtis`` that is revoked, else None; sees other processes' revocations.

        Re-reads the revocations only when ``revocation_signal`` moved since the last answer."""
        ...

    async def revocation_signal(self) -> Hashable:
        """A value that changes whenever a revocation may have been written, by any process; cheaper
        than reading the revocations. Raises StateError when it cannot be read (fail closed)."""
        ...

    async def approval_create(self, record: Mapping[str, Any]) -> str: ...

    async def approval_get(self, approval_id: str) -> dict[str, Any] | None: ...

    async def approval_resolve(
        self, approval_id: str, approved: bool, approver: str, reason: str | None = None
    ) -> bool:
        """Answer a pending request; False if it is unknown, already answered or expired."""
        ...

    async def approval_abandon(self, approval_id: str, reason: str) -> bool:
        """Withdraw a pending request nobody waits for any more (status ``abandoned``); False if it
        is unknown or no longer pending."""
        ...

    async def approval_list(self, pending_only: bool = True) -> list[dict[str, Any]]: ...

    async def approval_wait(self, approval_id: str, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        """The answered record, or None after ``timeout`` seconds (the request is then ``expired``)."""
        ...

    async def flow_get(self, scope: str) -> SessionFlow:
        """The flow state of session ``scope`` (empty when unknown or unused for ``FLOW_TTL``);
        reading counts as a use, so a session in use never loses its labels."""
        ...

    async def flow_add(
        self, scope: str, origins: Sequence[LabelOrigin], pieces: Sequence[FlowPiece], max_bytes: int
    ) -> SessionFlow:
        """Atomically add what a forwarded request brought and return the state after it.

        A label already held keeps its first origin; a piece is kept while the session's content
        stays within ``max_bytes`` (a piece already kept costs nothing again), else ``overflow``
        is set for good and nothing more is kept; ``version`` grows when anything changed."""
        ...

    async def ping(self) -> None:
        """Raise StateError now if the store is unusable (call at startup to fail early)."""
        ...

    async def close(self) -> None: ...


def new_approval_id() -> str:
    """Eight hex characters: short enough to type into ``mcp-guard approvals approve``."""
    return secrets.token_hex(4)


def normalise_approval_id(approval_id: str) -> str:
    return approval_id.strip().lower()


def approval_record(record: Mapping[str, Any], approval_id: str, now: float | None = None) -> dict[str, Any]:
    """The stored form of a new request: the caller's fields plus id, created and pending status."""
    out = dict(record)
    out["id"] = approval_id
    out.setdefault("created", time.time() if now is None else now)
    out["status"] = PENDING
    for name in ("approver", "reason", "resolved"):
        out.pop(name, None)
    return out


def is_overdue(record: Mapping[str, Any], now: float) -> bool:
    """A pending request whose ``expires_at`` has passed can no longer be answered."""
    expires = record.get("expires_at")
    return record.get("status") == PENDING and isinstance(expires, int | float) and now >= expires


def merge_counters(counters: Sequence[Counter]) -> list[Counter]:
    """One call counts once per key: a repeated key keeps its first position and the smallest limit."""
    seen: dict[str, Counter] = {}
    for c in counters:
        prior = seen.get(c.key)
        if prior is None:
            seen[c.key] = c
        elif c.limit < prior.limit:
            seen[c.key] = Counter(c.key, c.limit, prior.expires_at if prior.expires_at is not None else c.expires_at)
    return list(seen.values())


class RevocationCache:
    """Answers of ``revoked`` kept while the store's revocation signal stays where it was.

    The signal is read before the revocations, so an answer is never kept under a signal older than
    the data it came from: a revocation written after the read moves the signal for the next call.
    """

    MAX = 4096  # distinct chains kept; past it the cache starts afresh (bounded memory)

    __slots__ = ("_answers", "_signal")

    def __init__(self) -> None:
        self._signal: Hashable = object()  # equal to no signal: the first call reads
        self._answers: dict[tuple[str, ...], str | None] = {}

    def lookup(self, signal: Hashable, jtis: tuple[str, ...]) -> tuple[str | None] | None:
        """``(answer,)`` when known under ``signal``, else None (read the store, then ``keep``)."""
        if signal != self._signal:
            self._signal = signal
            self._answers.clear()
            return None
        try:
            return (self._answers[jtis],)
        except KeyError:
            return None

    def keep(self, signal: Hashable, jtis: tuple[str, ...], answer: str | None) -> None:
        if signal != self._signal:
            return
        if len(self._answers) >= self.MAX:
            self._answers.clear()
        self._answers[jtis] = answer


EMPTY_FLOW = SessionFlow(labels={})


@dataclass(frozen=True, slots=True)
class FlowChange:
    """What ``flow_add`` changes in a session's flow state (computed by ``plan_flow_add``)."""

    origins: tuple[LabelOrigin, ...]  # labels new to the session, each with its first origin
    pieces: tuple[tuple[str, FlowPiece], ...]  # (digest, piece) to append, in order
    content_bytes: int
    overflow: bool
    changed: bool


def piece_size(piece: FlowPiece) -> int:
    """What a piece costs against ``max_bytes``: its text's UTF-8 length."""
    return len(piece.text.encode("utf-8", "surrogatepass"))


def piece_digest(piece: FlowPiece) -> str:
    """Names a piece by its labels and text, so the same content read twice is kept once."""
    h = hashlib.sha256("\x1f".join(sorted(piece.labels)).encode())
    h.update(b"\x1e")
    h.update(piece.text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def plan_flow_add(
    held: Mapping[str, object],
    has_piece: Callable[[str], bool],
    content_bytes: int,
    overflow: bool,
    origins: Sequence[LabelOrigin],
    pieces: Sequence[FlowPiece],
    max_bytes: int,
) -> FlowChange:
    """The change ``flow_add`` makes to a session holding labels ``held`` and pieces ``has_piece``
    (by digest): the one place the memory and sqlite stores take their semantics from."""
    new: dict[str, LabelOrigin] = {}
    for o in origins:
        if o.label not in held and o.label not in new:
            new[o.label] = o
    added: list[tuple[str, FlowPiece]] = []
    seen: set[str] = set()
    was_overflow = overflow
    for piece in pieces:
        if overflow:
            break
        digest = piece_digest(piece)
        if digest in seen or has_piece(digest):
            continue
        size = piece_size(piece)
        if content_bytes + size > max_bytes:
            overflow = True
            break
        seen.add(digest)
        added.append((digest, piece))
        content_bytes += size
    changed = bool(new or added) or overflow != was_overflow
    return FlowChange(tuple(new.values()), tuple(added), content_bytes, overflow, changed)


def fresh_version(now: float) -> int:
    """The version a new (or expired and re-created) scope record starts from: the clock in
    microseconds, so a (scope, version) pair never names two different contents."""
    return int(now * 1_000_000)
