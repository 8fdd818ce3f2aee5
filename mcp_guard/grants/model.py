"""The grant model: tool patterns, per-tool entries, links, and the values handed to the proxy."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry

from mcp_guard.grants.errors import MALFORMED, GrantError
from mcp_guard.grants.fastschema import UNDER, Check, compile_fast, under_valid
from mcp_guard.grants.flow import MEMBERS as FLOW_MEMBERS
from mcp_guard.grants.flow import NONE as NO_FLOW
from mcp_guard.grants.flow import FlowClaims, parse_flow
from mcp_guard.grants.keys import jwk_to_public_key, thumbprint
from mcp_guard.kinds import Kind
from mcp_guard.paths import canonical_uri, uri_forms

DEFAULT_AUDIENCE = "urn:mcp-guard:local"
DETAIL_TYPE = "mcp_tool_grant"
USER_PREFIX = "user:"
AGENT_PREFIX = "agent:"

_SEGMENT = r"[A-Za-z0-9_.*-]{1,128}"
_PATTERN = re.compile(rf"^(?:[A-Za-z0-9_*-]{{1,64}})/{_SEGMENT}$")
_RESOURCE = re.compile(r"^(?:[A-Za-z0-9_*-]{1,64})/[^\s\x00-\x1f\x7f]{1,2048}$")
# the authorization_details member for each kind (``tools`` for tools, as before)
MEMBER = {Kind.TOOL: "tools", Kind.RESOURCE: "resources", Kind.PROMPT: "prompts"}
_JTI = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_NAME = re.compile(r"^[^\s\x00-\x1f]{1,256}$")

Approval = Literal["never", "always"]


# --------------------------------------------------------------------------- tool patterns


def check_pattern(pattern: Any, kind: Kind = Kind.TOOL) -> str:
    """``UPSTREAM/TOOL`` (or ``UPSTREAM/PROMPT``) with ``*`` globs inside a segment; ``?`` and
    ``[`` are not glob syntax here.  A resource pattern is ``UPSTREAM/URI_GLOB``: the URI part is
    a glob over the whole URI (``*`` crosses ``/``)."""
    if kind is Kind.RESOURCE:
        if not isinstance(pattern, str) or not _RESOURCE.fullmatch(pattern):
            raise GrantError(MALFORMED, f"resource {pattern!r} is not UPSTREAM/URI_GLOB (e.g. docs/* or fs/file:///srv/*)")
        return pattern
    if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
        raise GrantError(
            MALFORMED,
            f"{kind} {pattern!r} is not UPSTREAM/{kind.upper()} (letters, digits, _ - . and * globs within a segment)",
        )
    return pattern


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")))


@functools.lru_cache(maxsize=4096)
def _resource_glob(pattern: str) -> re.Pattern[str]:
    upstream, _sep, uri = pattern.partition("/")
    uri = canonical_uri(uri)  # requests are matched in their canonical form
    return re.compile(
        "[^/]*".join(re.escape(part) for part in upstream.split("*")) + "/" + ".*".join(re.escape(part) for part in uri.split("*")),
        re.DOTALL,
    )


def matches(pattern: str, tool: str, kind: Kind = Kind.TOOL) -> bool:
    """Does the glob ``pattern`` select the concrete name ``tool`` (for a resource ``UPSTREAM/URI``)?"""
    if kind is Kind.RESOURCE:
        return _resource_glob(pattern).fullmatch(tool) is not None  # (even a literal URI is canonicalised)
    if "*" not in pattern:
        return pattern == tool
    return _glob(pattern).fullmatch(tool) is not None


def covers(parent: str, child: str, kind: Kind = Kind.TOOL) -> bool:
    """Is every name the ``child`` pattern selects also selected by ``parent``?

    Sound by construction: the child's ``*`` is matched as a literal character, which the
    parent can only consume with one of its own ``*`` (parents never contain a literal ``*``);
    any expansion of the child's ``*`` is then consumed by that same parent ``*`` — in a resource
    pattern a URI ``*`` of the parent crosses ``/`` just as the child's does, and the upstream
    parts are compared as segments.
    """
    if parent == child:
        return True
    if kind is not Kind.RESOURCE:
        return _glob(parent).fullmatch(child) is not None
    p_up, _s, p_uri = parent.partition("/")
    c_up, _s, c_uri = child.partition("/")
    return _glob(p_up).fullmatch(c_up) is not None and _resource_glob("x/" + p_uri).fullmatch("x/" + canonical_uri(c_uri)) is not None


def resource_names(name: str) -> tuple[str, ...] | None:
    """Every reading of ``UPSTREAM/URI`` a grant must permit (see ``mcp_guard.paths.uri_forms``);
    None when the URI cannot be judged."""
    upstream, sep, uri = name.partition("/")
    forms = uri_forms(uri) if sep else None
    return None if forms is None else tuple(f"{upstream}/{f}" for f in forms)


# --------------------------------------------------------------------------- argument schemas

_EMPTY_REGISTRY: Registry[Any] = Registry()


def _check_refs(node: Any) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
            raise GrantError(MALFORMED, "argument schemas may only use local references ($ref: '#...')")
        if "$dynamicRef" in node or ("$schema" in node and node["$schema"] != "https://json-schema.org/draft/2020-12/schema"):
            raise GrantError(MALFORMED, "argument schemas are JSON Schema 2020-12 without dynamic references")
        for v in node.values():
            _check_refs(v)
    elif isinstance(node, list):
        for v in node:
            _check_refs(v)


@dataclass(frozen=True, slots=True)
class CompiledSchema:
    """``jsonschema`` for the truth and the explanation; ``fast`` (when the schema allows) for the hot path."""

    validator: Any  # a GrantValidator
    fast: Check | None

    def is_valid(self, instance: Any) -> bool:
        if self.fast is not None:
            return self.fast(instance)
        return bool(self.validator.is_valid(instance))


def _x_under(_validator: Any, root: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """The ``x-under`` keyword for ``jsonschema``: the same judgement as the fast path."""
    if not under_valid(root, instance):
        yield ValidationError("must be a path under the granted root")


# Draft 2020-12 plus the path-safe ``x-under`` keyword (an unknown keyword is otherwise ignored).
GrantValidator = validators.extend(Draft202012Validator, {UNDER: _x_under})


@functools.lru_cache(maxsize=1024)
def _compiled(canonical: str) -> CompiledSchema:
    schema = json.loads(canonical)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise GrantError(MALFORMED, f"an argument schema is not valid JSON Schema 2020-12: {exc.message}") from None
    return CompiledSchema(GrantValidator(schema, registry=_EMPTY_REGISTRY), compile_fast(schema))


def compile_schema(schema: Any) -> CompiledSchema:
    """Compiled once per distinct schema; chains share them (cache keyed by canonical JSON)."""
    if not isinstance(schema, dict | bool):
        raise GrantError(MALFORMED, "an argument schema must be a JSON Schema object")
    _check_refs(schema)
    return _compiled(json.dumps(schema, sort_keys=True, separators=(",", ":")))


# --------------------------------------------------------------------------- entries and links


@dataclass(frozen=True, slots=True)
class ToolEntry:
    pattern: str
    approval: Approval = "never"
    max_calls: int | None = None
    arguments: Any = None  # a JSON Schema, or None
    validator: CompiledSchema | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"approval": self.approval}
        if self.max_calls is not None:
            out["max_calls"] = self.max_calls
        if self.arguments is not None:
            out["arguments"] = self.arguments
        return out


def _count(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GrantError(MALFORMED, f"{what} must be a non-negative integer")
    return value


def parse_entry(pattern: Any, raw: Any, kind: Kind = Kind.TOOL) -> ToolEntry:
    pattern = check_pattern(pattern, kind)
    if not isinstance(raw, Mapping):
        raise GrantError(MALFORMED, f"the entry for {pattern} must be an object")
    # resources have no arguments: an `arguments` member there would be a restriction never applied
    unknown = set(raw) - ({"approval", "max_calls"} if kind is Kind.RESOURCE else {"approval", "max_calls", "arguments"})
    if unknown:
        # A restriction we cannot evaluate must not be silently dropped.
        raise GrantError(MALFORMED, f"the entry for {pattern} has unknown members: {', '.join(sorted(unknown))}")
    approval = raw.get("approval", "never")
    if approval not in ("never", "always"):
        raise GrantError(MALFORMED, f"approval for {pattern} must be `never` or `always`")
    arguments = raw.get("arguments")
    validator = compile_schema(arguments) if arguments is not None else None
    return ToolEntry(pattern, approval, _count(raw.get("max_calls"), f"max_calls for {pattern}"), arguments, validator)


@dataclass(frozen=True, slots=True)
class Link:
    """One verified-shape link's claims (the signature is checked separately)."""

    index: int
    compact: str
    iss: str
    user: str
    agent: str
    aud: str
    jti: str
    iat: float
    nbf: float
    exp: float
    purpose: str | None
    max_depth: int
    act: Mapping[str, Any]
    holder_jwk: Mapping[str, Any] | None
    holder_key: Ed25519PublicKey | None
    holder_kid: str | None
    parent_jti: str | None
    parent_hash: str | None
    tools: tuple[ToolEntry, ...]
    max_calls: int | None
    resources: tuple[ToolEntry, ...] = ()
    prompts: tuple[ToolEntry, ...] = ()
    flow: FlowClaims = NO_FLOW  # labels, label_ceiling, endorse, endorse_sources (grants/flow.py)

    def entries_for(self, tool: str) -> tuple[ToolEntry, ...]:
        return tuple(e for e in self.tools if matches(e.pattern, tool))

    def of(self, kind: Kind) -> tuple[ToolEntry, ...]:
        """The entries of one kind (a link without ``resources``/``prompts`` grants none)."""
        return self.tools if kind is Kind.TOOL else self.resources if kind is Kind.RESOURCE else self.prompts

    def entries(self, kind: Kind, name: str) -> tuple[ToolEntry, ...]:
        """The entries selecting ``name``; for a resource, every reading of its URI must be
        selected (else none is returned), so ``..`` or an escaped ``/`` cannot widen a pattern."""
        if kind is not Kind.RESOURCE:
            return tuple(e for e in self.of(kind) if matches(e.pattern, name, kind))
        readings = resource_names(name)
        if readings is None:
            return ()
        found: dict[str, ToolEntry] = {}
        for reading in readings:
            hit = [e for e in self.resources if matches(e.pattern, reading, kind)]
            if not hit:
                return ()
            found.update((e.pattern, e) for e in hit)
        return tuple(found.values())

    @property
    def label(self) -> str:
        return f"link {self.index}, agent {self.agent}"


_CLAIMS = frozenset(
    {"iss", "sub", "aud", "jti", "iat", "nbf", "exp", "act", "cnf", "purpose", "delegation",
     "parent_jti", "parent_hash", "authorization_details"}
)
_REQUIRED = ("iss", "sub", "aud", "jti", "iat", "exp", "act", "authorization_details")


def _time(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e11:
        raise GrantError(MALFORMED, f"claim {name} must be a NumericDate")
    return float(value)


def _string(value: Any, name: str, pattern: re.Pattern[str] = _NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise GrantError(MALFORMED, f"claim {name} must be a non-empty string without whitespace")
    return value


def parse_link(index: int, compact: str, claims: Mapping[str, Any]) -> Link:
    """Check the claims' shape (not their relation to other links)."""
    unknown = set(claims) - _CLAIMS
    if unknown:
        raise GrantError(MALFORMED, f"unknown claims: {', '.join(sorted(unknown))}")
    missing = [c for c in _REQUIRED if c not in claims]
    if missing:
        raise GrantError(MALFORMED, f"missing required claims: {', '.join(missing)}")
    sub = _string(claims["sub"], "sub")
    if not sub.startswith(USER_PREFIX) or len(sub) == len(USER_PREFIX):
        raise GrantError(MALFORMED, "claim sub must be `user:<name>`")
    act = claims["act"]
    if not isinstance(act, Mapping) or set(act) - {"sub", "sub_profile", "act"}:
        raise GrantError(MALFORMED, "claim act must be an RFC 8693 actor object")
    actor = _string(act.get("sub"), "act.sub")
    if not actor.startswith(AGENT_PREFIX) or len(actor) == len(AGENT_PREFIX):
        raise GrantError(MALFORMED, "claim act.sub must be `agent:<name>`")
    purpose = claims.get("purpose")
    if purpose is not None and (not isinstance(purpose, str) or not purpose):
        raise GrantError(MALFORMED, "claim purpose must be a non-empty string")
    delegation = claims.get("delegation", {})
    if not isinstance(delegation, Mapping) or set(delegation) - {"max_depth"}:
        raise GrantError(MALFORMED, "claim delegation must be {max_depth: N}")
    max_depth = _count(delegation.get("max_depth", 0), "delegation.max_depth") or 0
    holder: Mapping[str, Any] | None = None
    holder_key: Ed25519PublicKey | None
    if "cnf" in claims:
        cnf = claims["cnf"]
        if not isinstance(cnf, Mapping) or set(cnf) != {"jwk"} or not isinstance(cnf["jwk"], Mapping):
            raise GrantError(MALFORMED, "claim cnf must be {jwk: <Ed25519 public key>}")
        holder = cnf["jwk"]
        holder_key = jwk_to_public_key(holder)
    else:
        holder_key = None
    if max_depth > 0 and holder is None:
        raise GrantError(MALFORMED, "a link that allows further delegation must name the holder's key (cnf)")
    details = claims["authorization_details"]
    if not isinstance(details, list) or len(details) != 1 or not isinstance(details[0], Mapping):
        raise GrantError(MALFORMED, "authorization_details must hold exactly one mcp_tool_grant entry")
    detail = details[0]
    if detail.get("type") != DETAIL_TYPE:
        raise GrantError(MALFORMED, f"authorization_details type {detail.get('type')!r} is not understood")
    if set(detail) - {"type", "tools", "resources", "prompts", "max_calls", *FLOW_MEMBERS}:
        raise GrantError(MALFORMED, "authorization_details has members this guard cannot evaluate")
    tools_raw = detail.get("tools")
    if not isinstance(tools_raw, Mapping):
        raise GrantError(MALFORMED, "authorization_details.tools must be an object keyed by UPSTREAM/TOOL")
    tools = tuple(parse_entry(p, e) for p, e in tools_raw.items())
    more: dict[Kind, tuple[ToolEntry, ...]] = {}
    for kind in (Kind.RESOURCE, Kind.PROMPT):
        raw = detail.get(MEMBER[kind], {})
        if not isinstance(raw, Mapping):
            raise GrantError(MALFORMED, f"authorization_details.{MEMBER[kind]} must be an object keyed by UPSTREAM/{'URI_GLOB' if kind is Kind.RESOURCE else 'PROMPT'}")
        more[kind] = tuple(parse_entry(p, e, kind) for p, e in raw.items())
    parent_jti = claims.get("parent_jti")
    parent_hash = claims.get("parent_hash")
    if not isinstance(parent_jti, str | None) or not isinstance(parent_hash, str | None):
        raise GrantError(MALFORMED, "claims parent_jti and parent_hash must be strings")
    if index == 0 and (parent_jti is not None or parent_hash is not None):
        raise GrantError(MALFORMED, "the root link must not name a parent")
    iat = _time(claims["iat"], "iat")
    return Link(
        index=index,
        compact=compact,
        iss=_string(claims["iss"], "iss"),
        user=sub[len(USER_PREFIX):],
        agent=actor[len(AGENT_PREFIX):],
        aud=_string(claims["aud"], "aud"),
        jti=_string(claims["jti"], "jti", _JTI),
        iat=iat,
        nbf=_time(claims["nbf"], "nbf") if "nbf" in claims else iat,
        exp=_time(claims["exp"], "exp"),
        purpose=purpose,
        max_depth=max_depth,
        act=act,
        holder_jwk=holder,
        holder_key=holder_key,
        holder_kid=thumbprint(holder_key) if holder_key is not None else None,
        parent_jti=parent_jti,
        parent_hash=parent_hash,
        tools=tools,
        max_calls=_count(detail.get("max_calls"), "authorization_details.max_calls"),
        resources=more[Kind.RESOURCE],
        prompts=more[Kind.PROMPT],
        flow=parse_flow(detail),
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Budget:
    """One call counter the proxy must consume atomically (all of a call's budgets, or none)."""

    key: str
    limit: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class CallCheck:
    allowed: bool
    approval_required: bool = False
    reason: str = ""
    link_index: int | None = None
    code: str | None = None
