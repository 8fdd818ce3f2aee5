"""guard.yaml as written: the one description of its keys, their types and defaults.

``mcp-guard schema config`` prints this model's JSON Schema and ``load`` validates every file with
it (after ``${VAR}`` expansion, so a value is checked as the guard will use it).  Rules that
span keys or look at the disk (a key file that must exist, an issuer that must be listed
elsewhere) are ``load``'s.  Every text value may be written as a number (``user: 1001``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, WithJsonSchema
from pydantic_core import PydanticCustomError

from mcp_guard.config.model import (
    DEFAULT_AUDIENCE,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_STATE_URL,
    DEFAULT_TIMEOUT,
    ENV_PATTERN,
    LOOPBACK_HOSTS,
    UPSTREAM_NAME,
    parse_duration,
)
from mcp_guard.typedoc import rejected
from mcp_guard.yamlsrc import did_you_mean

_TEXT_SCHEMA: dict[str, Any] = {"type": ["string", "number"]}


def _text(value: Any) -> str:
    """Numbers are read as their text; anything else but a string is refused."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise rejected("must be a string")
    return str(value)


Text = Annotated[str, BeforeValidator(_text), WithJsonSchema(_TEXT_SCHEMA)]


def _duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds is None:
        raise rejected("must be a duration such as 30s, 10m or 1h")
    return seconds


Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema({
    "description": "seconds, or a duration such as 500ms, 30s, 10m, 1h, 1d",
    "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}],
})]


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise rejected("must be a positive integer")
    return value


Positive = Annotated[int, BeforeValidator(_positive), WithJsonSchema({"type": "integer", "minimum": 1})]


def _http_url(value: Any) -> str:
    """An absolute http(s) URL without fragment; ``http://`` only on a loopback host."""
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise rejected("must be an absolute https:// URL without a #fragment")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise rejected("must use https:// (http:// is accepted only on 127.0.0.1, localhost or ::1)")
    return text


def _serve_url(value: Any) -> str:
    try:
        return _http_url(value)
    except PydanticCustomError as exc:
        raise rejected(f"`serve.url` {exc.message()}", whole=True) from None


HttpUrl = Annotated[str, BeforeValidator(_http_url), WithJsonSchema(_TEXT_SCHEMA)]


def _text_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise rejected("must be a list of strings")
    return value


Texts = Annotated[tuple[Text, ...], BeforeValidator(_text_list), WithJsonSchema({"type": "array", "items": _TEXT_SCHEMA})]


def _scopes(value: Any) -> Any:
    """``scopes: [a, b]`` or ``scopes: "a b"``."""
    return _text(value).split() if not isinstance(value, list) else value


Scopes = Annotated[tuple[Text, ...], BeforeValidator(_scopes), WithJsonSchema({
    "anyOf": [{"type": "array", "items": _TEXT_SCHEMA}, {"type": "string"}]})]


def _env_name(value: Any) -> str:
    text = _text(value)
    if not ENV_PATTERN.fullmatch(text):
        raise rejected(f"`{text}` is not a variable name or a PREFIX* pattern", whole=True)
    return text


def _env_names(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise rejected("must be a list of variable names (NAME or PREFIX*)")
    return value


EnvName = Annotated[str, BeforeValidator(_env_name), WithJsonSchema(_TEXT_SCHEMA)]


def _roots(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_text(v) for v in value)
    if _text(value) not in ("pass", "none"):
        raise rejected(f"must be one of pass | none, not `{value}`", did_you_mean(str(value), ("pass", "none")))
    return value


Roots = Annotated[Any, BeforeValidator(_roots), WithJsonSchema({
    "description": "pass: the host's roots; none: no roots; or a list of directories (relative to guard.yaml)",
    "anyOf": [{"enum": ["pass", "none"]}, {"type": "array", "items": _TEXT_SCHEMA}]})]


def _policies(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


PolicyPaths = Annotated[tuple[Text, ...], BeforeValidator(_policies), WithJsonSchema({
    "description": "a policy file or directory, or a list of them, relative to guard.yaml",
    "anyOf": [_TEXT_SCHEMA, {"type": "array", "items": _TEXT_SCHEMA}]})]


def _name(value: Any) -> str:
    if not isinstance(value, str) or not UPSTREAM_NAME.fullmatch(value):
        raise rejected(f"upstream name `{value}` must match [A-Za-z0-9_-]{{1,32}}", whole=True)
    return value


UpstreamName = Annotated[str, BeforeValidator(_name), WithJsonSchema({"type": "string", "pattern": UPSTREAM_NAME.pattern})]


class Block(BaseModel):
    """A mapping of guard.yaml: unknown keys are refused (with a "did you mean")."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, use_attribute_docstrings=True, defer_build=True)
    NEEDS: ClassVar[dict[str, str]] = {}  # a better sentence than "X needs `key`" for a missing key


def _metadata_url(value: Any) -> str:
    text = _text(value)
    if text and (urlsplit(text).scheme != "https" or urlsplit(text).path in ("", "/")):
        raise rejected("must be an https URL with a path (it is the client's id)")
    return text


def _loopback(value: Any) -> str:
    text = _text(value)
    u = urlsplit(text)
    if text and not (u.scheme == "http" and u.hostname in LOOPBACK_HOSTS and u.port is not None):
        raise rejected("must be a loopback URL with a port, such as http://127.0.0.1:8765/callback")
    return text


def _issuer(value: Any) -> str:
    text = _text(value)
    if text and urlsplit(text).scheme not in ("https", "http"):
        raise rejected("must be the authorization server's https URL")
    return text


class OAuthDoc(Block):
    """authorization code + PKCE with a loopback redirect; tokens kept per user"""

    client_id: Text | None = None
    """a pre-registered client; else a client metadata document or dynamic registration"""
    client_secret: Text | None = None
    client_metadata_url: Annotated[str, BeforeValidator(_metadata_url), WithJsonSchema(_TEXT_SCHEMA)] | None = None
    """the https URL of this client's metadata document (it is the client's id)"""
    scopes: Scopes = ()
    redirect_uri: Annotated[str, BeforeValidator(_loopback), WithJsonSchema(_TEXT_SCHEMA)] | None = None
    """the loopback URL registered for a pre-registered client, e.g. http://127.0.0.1:8765/callback"""


class ClientCredentialsDoc(Block):
    """a service's own credentials, no person in the loop"""

    NEEDS: ClassVar[dict[str, str]] = {k: f"`client_credentials` needs `{k}`" for k in ("client_id", "client_secret")}

    client_id: Text
    client_secret: Text
    scopes: Scopes = ()
    issuer: Annotated[str, BeforeValidator(_issuer), WithJsonSchema(_TEXT_SCHEMA)] | None = None
    """the only authorization server these credentials may be sent to"""


class AuthDoc(Block):
    """the upstream's own authorization (the guard is the OAuth client); one of oauth, client_credentials, headers"""

    oauth: OAuthDoc | None = None
    client_credentials: ClientCredentialsDoc | None = None
    headers: dict[Text, Text] | None = None
    """static headers, merged with the upstream's `headers`"""


class UpstreamDoc(Block):
    """one upstream MCP server: `command` (stdio) or `url` (Streamable HTTP)"""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["command"]}, {"required": ["url"]}]})
    command: Text | None = None
    """stdio upstream: the program to start"""
    args: Texts = ()
    env: dict[Text, Text] | None = None
    cwd: Text | None = None
    url: Text | None = None
    """Streamable HTTP upstream: its MCP endpoint"""
    headers: dict[Text, Text] | None = None
    prefix: StrictBool = True
    """expose tools as <upstream>_<tool>"""
    roots: Roots = "none"
    timeout: Duration = DEFAULT_TIMEOUT
    startup_timeout: Duration = DEFAULT_STARTUP_TIMEOUT
    env_passthrough: Annotated[tuple[EnvName, ...], BeforeValidator(_env_names)] = ()
    """more of the guard's environment variables passed to a stdio upstream (NAME or PREFIX*)"""
    trust_annotations: StrictBool = False
    protocol: Literal["legacy", "auto", "modern"] = "legacy"
    workdir: Text | None = None
    """relative paths in arguments are judged against this directory"""
    resolve: StrictBool = False
    """resolve symlinks before judging paths (local upstreams only)"""
    auth: AuthDoc | None = None
    required: StrictBool = False
    """serve: not ready (GET /readyz answers 503) while this upstream is down"""


class IdentityDoc(Block):
    """who is acting when no grant decides it"""

    user: Text | None = None
    agent: Text | None = None
    purpose: Text | None = None
    grant: Text | None = None


class TrustDoc(Block):
    """issuers whose grant chains are accepted"""

    issuers: dict[Text, Text] | None = None
    """issuer name -> public key file"""
    audience: Text = DEFAULT_AUDIENCE


def _state_key(value: Any) -> str:
    text = _text(value)
    if len(text) < 32:
        raise rejected("must be at least 32 characters of secret")
    return text


class ApprovalsDoc(Block):
    timeout: Duration = 120.0
    remember: Literal["none", "session"] = "none"
    state_key: Annotated[str, BeforeValidator(_state_key), WithJsonSchema(_TEXT_SCHEMA)] | None = None
    """shared secret sealing 2026-07-28 requestState across replicas (at least 32 characters)"""


def _mib(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1024:
        raise rejected("must be a number of MiB above 0 and at most 1024")
    return float(value)


class FlowDoc(Block):
    """information flow: labelled content kept per session for `carries`"""

    max_content_mib: Annotated[float, BeforeValidator(_mib), WithJsonSchema(
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1024})] = 16.0


class AuditDoc(Block):
    path: Text | None = None
    """- for stderr, else a file (relative to guard.yaml)"""
    fsync: StrictBool = False
    include_args: StrictBool = False
    max_bytes: Positive | None = None
    """rotate when the file would grow past this size"""


def _state_url(value: Any) -> str:
    text = _text(value)
    if not text.startswith(("sqlite://", "redis://", "rediss://", "memory://")):
        raise rejected("`state.url` must start with sqlite://, redis:// or memory://", whole=True)
    return text


class StateDoc(Block):
    url: Annotated[str, BeforeValidator(_state_url), WithJsonSchema(
        {"type": "string", "pattern": r"^(sqlite://|redis://|rediss://|memory://|.*\$\{)"})] = DEFAULT_STATE_URL


class TelemetryDoc(Block):
    """overrides of the standard OTEL_* variables"""

    traces_exporter: Text | None = None
    metrics_exporter: Text | None = None
    endpoint: Text | None = None
    service_name: Text | None = None


class ServeOAuthDoc(Block):
    """an authorization server whose JWT access tokens serve accepts"""

    issuer: HttpUrl
    audience: Text | None = None
    """the resource URI tokens must name (default serve.url)"""
    scopes: Texts = ()
    user: Text = "sub"
    agent: Text | None = None
    purpose: Text | None = None


class TokenExchangeDoc(Block):
    """POST /token: OAuth access tokens exchanged for grant-chain roots"""

    NEEDS: ClassVar[dict[str, str]] = dict.fromkeys(
        ("key", "issuer"), "`token_exchange` needs `key` (the issuer's private key) and `issuer` (its name in trust.issuers)")
    key: Text
    issuer: Text
    ttl: Duration = 3600.0


def _openid(value: Any) -> Any:
    if isinstance(value, list) and value and "openid" not in value:
        raise rejected("must include openid: the page needs an ID token naming the approver")
    return value


class ApprovalPageDoc(Block):
    """the approval page: approvers sign in at this issuer with the guard's own client"""

    NEEDS: ClassVar[dict[str, str]] = {
        "client_id": "`serve.approvals` needs `client_id` (the guard's own client at the issuer, for the approval page)"}
    issuer: HttpUrl | None = None
    client_id: Text
    client_secret: Text | None = None
    approvers: Texts = ()
    scopes: Annotated[Texts, BeforeValidator(_openid)] = ("openid", "profile", "email")
    session_ttl: Duration = 600.0


def _listen(value: Any) -> str:
    text = _text(value)
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise rejected(f"must be HOST:PORT with a port from 1 to 65535, not {text!r}")
    return text


class AdminDoc(Block):
    """the operations listener: GET /healthz, /readyz and /metrics (Prometheus)"""

    NEEDS: ClassVar[dict[str, str]] = {"listen": "`serve.admin` needs `listen: HOST:PORT` (e.g. 127.0.0.1:9464)"}
    listen: Annotated[str, BeforeValidator(_listen), WithJsonSchema(_TEXT_SCHEMA)]
    """HOST:PORT, e.g. 127.0.0.1:9464"""


class ServeDoc(Block):
    """mcp-guard serve: the canonical resource URL and the OAuth issuers whose access tokens are accepted"""

    url: Annotated[str, BeforeValidator(_serve_url), WithJsonSchema(_TEXT_SCHEMA)] | None = None
    """the canonical resource URI (RFC 8707 audience, RFC 9728 resource)"""
    oauth: Annotated[tuple[ServeOAuthDoc, ...], BeforeValidator(lambda v: v if isinstance(v, list) else _oauth_list())] = ()
    allowed_hosts: Texts = ()
    """Host header values accepted besides the listen address and url's host"""
    max_sessions_per_principal: Positive = 64
    """past this a principal's own oldest session is closed"""
    max_sessions_per_root: Positive = 256
    """sessions of every principal below one delegating root together; past this a new one is refused"""
    max_sessions: Positive = 10000
    """sessions in all, per guard process; past this a new one is refused"""
    session_idle: Duration = 1800.0
    max_body: Positive = 4 * 1024 * 1024
    token_exchange: TokenExchangeDoc | None = None
    approvals: ApprovalPageDoc | None = None
    admin: AdminDoc | None = None
    drain_timeout: Duration = 20.0
    """SIGTERM: how long what is in flight may take to finish"""


def _oauth_list() -> list[Any]:
    raise rejected("`serve.oauth` must be a list of authorization servers (`- issuer: https://...`)", whole=True)


def _version(value: Any) -> int:
    if value != 1 or isinstance(value, bool):
        raise rejected("`version` must be 1", whole=True)
    return 1


class GuardDoc(Block):
    """mcp-guard guard.yaml"""

    NEEDS: ClassVar[dict[str, str]] = {"version": "`version` must be 1"}
    version: Annotated[int, BeforeValidator(_version), WithJsonSchema({"const": 1})]
    upstreams: dict[UpstreamName, UpstreamDoc] | None = Field(
        None, json_schema_extra={"propertyNames": {"pattern": UPSTREAM_NAME.pattern}})
    """upstream name -> the server; its tools are exposed as <name>_<tool>"""
    policies: PolicyPaths = ()
    identity: IdentityDoc | None = None
    trust: TrustDoc | None = None
    approvals: ApprovalsDoc | None = None
    audit: AuditDoc | None = None
    pinning: Literal["off", "warn", "enforce"] = "warn"
    lock_file: Text | None = None
    """default: guard.lock beside guard.yaml"""
    state: StateDoc | None = None
    telemetry: TelemetryDoc | None = None
    serve: ServeDoc | None = None
    flow: FlowDoc | None = None


CONFIG_KEYS = tuple(GuardDoc.model_fields)
"""The top-level keys of guard.yaml."""
