"""The configuration the guard runs with: guard.yaml read, expanded, checked and resolved.

Paths here are absolute and ``${VAR}`` already expanded; ``document`` describes the file as
written, ``load`` turns one into the other.  Frozen values, shared by every module that runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcp_guard.paths import PathContext

DEFAULT_AUDIENCE = "urn:mcp-guard:local"
DEFAULT_STATE_URL = "sqlite:///.mcp-guard/state.db"
EXPOSED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DEFAULT_TIMEOUT = 60.0
"""Seconds an upstream request may take; the handshake may take at least ``startup_timeout``."""
DEFAULT_STARTUP_TIMEOUT = 10.0
"""Seconds the host's first request waits for an upstream to start; a slower one joins later."""
ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

CHILD_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_*", "TZ", "TMPDIR", "TEMP", "TMP",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
)
"""The guard's variables every stdio upstream gets (when set): what programs need to run at all,
and which certificate authorities to trust (``npx`` cannot reach a registry behind a TLS-inspecting
proxy without them).  On Windows also ``CHILD_ENV_WINDOWS`` (the MCP SDK's list)."""
CHILD_ENV_WINDOWS = (
    "APPDATA", "HOMEDRIVE", "HOMEPATH", "LOCALAPPDATA", "PATHEXT", "PROCESSOR_ARCHITECTURE", "SYSTEMDRIVE",
    "SYSTEMROOT", "USERNAME", "USERPROFILE", "COMSPEC", "WINDIR", "PROGRAMFILES",
)

RootsMode = Literal["pass", "none"] | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """``auth: {oauth: …}``: authorization code + PKCE with a loopback redirect, tokens kept per user."""

    client_id: str | None = None  # a pre-registered client; else a metadata document or registration
    client_secret: str | None = field(default=None, repr=False)
    client_metadata_url: str | None = None
    scopes: tuple[str, ...] = ()
    redirect_uri: str | None = None  # the loopback URI registered for a pre-registered client


@dataclass(frozen=True, slots=True)
class ClientCredentialsConfig:
    """``auth: {client_credentials: …}``: a service's own credentials, no person in the loop."""

    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ()
    issuer: str | None = None  # the only authorization server these credentials may be sent to


UpstreamAuth = OAuthConfig | ClientCredentialsConfig


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream MCP server: a stdio child (``command``) or a Streamable HTTP endpoint (``url``)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    prefix: bool = True
    roots: RootsMode = "none"
    timeout: float = DEFAULT_TIMEOUT
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    env_passthrough: tuple[str, ...] = ()  # more of the guard's variables for a stdio child (NAME or PREFIX*)
    trust_annotations: bool = False
    protocol: Literal["legacy", "auto", "modern"] = "legacy"  # the era the guard speaks to it
    workdir: str | None = None  # where the upstream resolves relative paths (absolute), if declared
    resolve: bool = False  # resolve symlinks on the guard's disk before `under` judges a path (local only)
    paths: PathContext = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", PathContext(self.workdir, resolve_path if self.resolve else None))
    auth: UpstreamAuth | None = None  # the guard's own OAuth client toward an HTTP upstream
    token_file: str | None = None  # where that client keeps its tokens (encrypted), for this user
    browser: str | None = None  # $BROWSER when set: `run` may then authorize interactively itself
    required: bool = False  # serve: not ready (GET /readyz 503) while this upstream is not up

    def exposed(self, tool: str) -> str:
        """The name the host sees for this upstream's ``tool``."""
        return f"{self.name}_{tool}" if self.prefix else tool


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    user: str | None = None
    agent: str | None = None
    purpose: str | None = None
    grant: str | None = None


@dataclass(frozen=True, slots=True)
class TrustConfig:
    issuers: Mapping[str, Path] = field(default_factory=dict)
    audience: str = DEFAULT_AUDIENCE


@dataclass(frozen=True, slots=True)
class ApprovalsConfig:
    timeout: float = 120.0
    remember: Literal["none", "session"] = "none"
    state_key: str | None = None  # shared secret sealing 2026-07-28 requestState across replicas


@dataclass(frozen=True, slots=True)
class FlowConfig:
    max_content_mib: float = 16.0  # labelled content kept per session for `carries`; past it, fail closed


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: str | None = None  # None = off, "-" = stderr, else an absolute file path
    fsync: bool = False
    include_args: bool = False
    max_bytes: int | None = None  # rotate when the file would grow past this size


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Overrides of the standard OTEL_* variables; None = take the environment's value."""

    traces_exporter: str | None = None
    metrics_exporter: str | None = None
    endpoint: str | None = None
    service_name: str | None = None


@dataclass(frozen=True, slots=True)
class OAuthIssuerConfig:
    """One authorization server whose JWT access tokens ``serve`` accepts."""

    issuer: str
    audience: str  # the canonical resource URI the token must name in ``aud`` (default serve.url)
    scopes: tuple[str, ...] = ()  # every one required
    user: str = "sub"  # claim naming the origin user
    agent: str | None = None  # claim naming the agent; None = client_id, then azp
    purpose: str | None = None  # claim naming the purpose


@dataclass(frozen=True, slots=True)
class TokenExchangeConfig:
    """``POST /token``: OAuth access tokens exchanged for grant-chain roots signed by ``key``."""

    key: Path
    issuer: str  # must be one of trust.issuers, so the roots it signs verify here
    ttl: float = 3600.0


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``serve.admin``: the operations listener (probes and the Prometheus scrape), apart from ``/mcp``."""

    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True, slots=True)
class ApprovalPageConfig:
    """``serve.approvals``: the guard's approval page, where the approver signs in at ``issuer``
    (authorization code + PKCE) as a client of its own, never with the calling agent's identity."""

    issuer: str
    client_id: str
    client_secret: str | None = None  # None: a public client (PKCE only)
    approvers: tuple[str, ...] = ()  # who may answer (values of the issuer's user claim); () = the chain's origin user
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    user: str = "sub"  # the ID-token claim naming the approver (the serve.oauth issuer's `user` claim)
    session_ttl: float = 600.0  # how long a sign-in lasts on the page


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """``mcp-guard serve``: the public resource URI, OAuth issuers, and limits under abuse."""

    url: str | None = None  # canonical resource URI (RFC 8707 audience, RFC 9728 ``resource``)
    oauth: tuple[OAuthIssuerConfig, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host header values accepted besides the listen address and url's host
    max_sessions_per_principal: int = 64
    max_sessions_per_root: int = 256  # every principal below one delegating root together
    max_sessions: int = 10000  # in all, per guard process
    session_idle: float = 1800.0
    max_body: int = 4 * 1024 * 1024
    token_exchange: TokenExchangeConfig | None = None
    approvals: ApprovalPageConfig | None = None
    admin: AdminConfig | None = None
    drain_timeout: float = 20.0  # SIGTERM: how long what is in flight may take to finish


@dataclass(frozen=True, slots=True)
class GuardConfig:
    source: Path | None = None
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    policies: tuple[Path, ...] = ()
    identity: IdentityConfig = IdentityConfig()
    trust: TrustConfig = TrustConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    audit: AuditConfig = AuditConfig()
    pinning: Literal["off", "warn", "enforce"] = "warn"
    lock_file: Path | None = None
    state_url: str = DEFAULT_STATE_URL
    telemetry: TelemetryConfig = TelemetryConfig()
    serve: ServeConfig = ServeConfig()
    flow: FlowConfig = FlowConfig()
    # problems that do not stop a guard but that ``check`` reports (``file:line:col: ...`` lines):
    # an upstream command that is not there only fails that upstream, as at run time
    advisories: tuple[str, ...] = field(default=(), compare=False)

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()


# --------------------------------------------------------------------------- expansion

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}`` and ``${VAR:-default}``; returns the text and the names that were unset."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    return _VAR.sub(sub, text), missing


# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    """``"120s"``, ``"10m"``, ``"1h"``, ``90`` (seconds) -> seconds; None if not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        return float(m.group(1)) * _UNIT[m.group(2)]
    return None


def resolve_path(path: str) -> str | None:
    """The guard's own view of where ``path`` (absolute) leads, symbolic links followed; None
    when it cannot tell.  Components that do not exist yet (a file about to be written) are
    kept as written after the deepest existing directory; ``..`` among them cannot be placed."""
    try:
        head, tail = path, []
        while not os.path.lexists(head):
            head, name = os.path.split(head)
            if not name:
                return None
            tail.append(name)
        if any(t in (".", "..") for t in tail):
            return None
        return os.path.join(os.path.realpath(head, strict=True), *reversed(tail))
    except (OSError, ValueError):
        return None


def resolve_state_url(url: str, base: Path) -> str:
    """``sqlite:///rel/path`` is relative to ``base``; ``sqlite:////abs/path`` is absolute."""
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):]
        if not rest.startswith("/"):
            return "sqlite:///" + str((base / rest).resolve())
    return url


