"""guard.yaml: the only module that reads configuration files and the environment.

Every problem is reported at once as ``file:line:col: message`` (with a "did you mean" hint for
near-miss keys); a config with any error never starts a guard.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from mcp_guard.errors import ConfigError
from mcp_guard.paths import PathContext
from mcp_guard.yamlsrc import Path as YPath
from mcp_guard.yamlsrc import Problem, SourceMap, SourceReader, YamlSyntaxError, did_you_mean, load

if TYPE_CHECKING:
    from mcp_guard.telemetry.settings import Settings as TelemetrySettings

DEFAULT_AUDIENCE = "urn:mcp-guard:local"
DEFAULT_STATE_URL = "sqlite:///.mcp-guard/state.db"
EXPOSED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DEFAULT_TIMEOUT = 60.0
"""Seconds an upstream request may take; the handshake may take at least ``startup_timeout``."""
DEFAULT_STARTUP_TIMEOUT = 10.0
"""Seconds the host's first request waits for an upstream to start; a slower one joins later."""
ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")

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
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNIT[m.group(2)]
    return None


# --------------------------------------------------------------------------- loading


class _Reader(SourceReader):
    """guard.yaml's reader: strings expand ``${VAR}`` from ``environ``."""

    def __init__(self, smap: SourceMap, environ: Mapping[str, str]) -> None:
        super().__init__(smap)
        self.environ = environ

    def error(self, path: YPath, message: str, hint: str | None = None, *, value: bool = False, warning: bool = False) -> None:
        """Config problems point at the key unless ``value`` asks for the value's position."""
        super().error(path, message, hint, value=value, warning=warning)

    def mapping(self, data: Any, path: YPath, allowed: set[str], what: str) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.error(path, f"{what} must be a mapping", value=True)
            return {}
        self.unknown_keys(data, path, sorted(allowed), what)
        return data

    def string(self, data: Any, path: YPath, *, expand_env: bool = True) -> str | None:
        if data is None:
            return None
        if isinstance(data, bool) or not isinstance(data, str | int | float):
            self.error(path, f"`{path[-1]}` must be a string", value=True)
            return None
        text = str(data)
        if expand_env:
            text, missing = expand(text, self.environ)
            for name in missing:
                self.error(
                    path,
                    f"environment variable {name} is not set",
                    f"set it, or write ${{{name}:-default}}",
                    value=True,
                )
        return text

    def boolean(self, data: Any, path: YPath, default: bool) -> bool:
        if data is None:
            return default
        if not isinstance(data, bool):
            self.error(path, f"`{path[-1]}` must be true or false", value=True)
            return default
        return data

    def choice(self, data: Any, path: YPath, choices: tuple[str, ...], default: str) -> str:
        if data is None:
            return default
        text = self.string(data, path)
        if text is None:
            return default
        if text not in choices:
            options = " | ".join(choices)
            self.error(path, f"`{path[-1]}` must be one of {options}, not `{text}`", did_you_mean(text, choices), value=True)
            return default
        return text

    def duration(self, data: Any, path: YPath, default: float) -> float:
        if data is None:
            return default
        seconds = parse_duration(self.string(data, path) if isinstance(data, str) else data)
        if seconds is None:
            self.error(path, f"`{path[-1]}` must be a duration such as 30s, 10m or 1h", value=True)
            return default
        return seconds


_TOP = {"version", "upstreams", "policies", "identity", "trust", "approvals", "audit", "pinning", "state", "telemetry", "lock_file", "serve",
        "flow"}
_UPSTREAM = {
    "command", "args", "env", "env_passthrough", "cwd", "url", "headers", "prefix", "roots", "timeout", "startup_timeout",
    "trust_annotations", "protocol", "workdir", "resolve", "auth", "required",
}
_AUTH = {"oauth", "client_credentials", "headers"}
_OAUTH = {"client_id", "client_secret", "client_metadata_url", "scopes", "redirect_uri"}
_CLIENT_CREDENTIALS = {"client_id", "client_secret", "scopes", "issuer"}
_IDENTITY = {"user", "agent", "purpose", "grant"}
_TRUST = {"issuers", "audience"}
_APPROVALS = {"timeout", "remember", "state_key"}
_AUDIT = {"path", "fsync", "include_args", "max_bytes"}
_STATE = {"url"}
_TELEMETRY = {"traces_exporter", "metrics_exporter", "endpoint", "service_name"}
_SERVE = {"url", "oauth", "allowed_hosts", "max_sessions_per_principal", "max_sessions_per_root", "max_sessions", "session_idle", "max_body",
          "token_exchange", "approvals", "admin", "drain_timeout"}
_ADMIN = {"listen"}
_APPROVAL_PAGE = {"issuer", "client_id", "client_secret", "approvers", "scopes", "session_ttl"}
_SERVE_OAUTH = {"issuer", "audience", "scopes", "user", "agent", "purpose"}
_TOKEN_EXCHANGE = {"key", "issuer", "ttl"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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


def _resolve(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else (base / p).resolve()


def resolve_state_url(url: str, base: Path) -> str:
    """``sqlite:///rel/path`` is relative to ``base``; ``sqlite:////abs/path`` is absolute."""
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):]
        if not rest.startswith("/"):
            return "sqlite:///" + str((base / rest).resolve())
    return url


def _scopes(r: _Reader, data: Any, path: YPath) -> tuple[str, ...]:
    """``scopes: [a, b]`` or ``scopes: "a b"``."""
    if data is None:
        return ()
    if isinstance(data, list):
        return tuple(s for i, v in enumerate(data) if (s := r.string(v, (*path, i))))
    text = r.string(data, path)
    return tuple(text.split()) if text else ()


def _loopback_uri(text: str) -> bool:
    u = urlsplit(text)
    return u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost", "::1") and u.port is not None


def _parse_auth(r: _Reader, data: Any, path: YPath, url: str | None, headers: dict[str, str]) -> UpstreamAuth | None:
    """``auth:`` on an HTTP upstream: ``oauth``, ``client_credentials`` or static ``headers``.

    ``headers`` are merged into the upstream's static headers (so ``auth: {headers: …}`` and the
    top-level ``headers:`` are one thing); an ``Authorization`` header beside an OAuth form is
    refused, since the guard would overwrite one credential with the other.
    """
    a = r.mapping(data, path, _AUTH, "auth")
    if url is None:
        r.error(path, "`auth` applies to HTTP upstreams (`url`) only", "a stdio server takes its credentials from `env`")
        return None
    for k, v in r.mapping(a.get("headers"), (*path, "headers"), set(a.get("headers") or {}), "headers").items():
        headers[str(k)] = r.string(v, (*path, "headers", k)) or ""
    forms = [k for k in ("oauth", "client_credentials") if k in a]
    if not forms:
        if "headers" not in a:
            r.error(path, "`auth` needs one of `oauth`, `client_credentials` or `headers`")
        return None
    if len(forms) > 1:
        r.error(path, "`auth` takes one of `oauth` or `client_credentials`, not both")
        return None
    if any(k.lower() == "authorization" for k in headers):
        r.error(path, f"`auth.{forms[0]}` supplies the Authorization header; remove the static one from `headers`")
    form = forms[0]
    fpath: YPath = (*path, form)
    if form == "oauth":
        o = r.mapping(a.get("oauth"), fpath, _OAUTH, "auth.oauth")
        client_id = r.string(o.get("client_id"), (*fpath, "client_id")) or None
        secret = r.string(o.get("client_secret"), (*fpath, "client_secret")) or None
        cimd = r.string(o.get("client_metadata_url"), (*fpath, "client_metadata_url")) or None
        redirect = r.string(o.get("redirect_uri"), (*fpath, "redirect_uri")) or None
        if secret and not client_id:
            r.error((*fpath, "client_secret"), "`client_secret` needs the pre-registered `client_id` it belongs to")
        if cimd and client_id:
            r.error((*fpath, "client_metadata_url"), "give either a pre-registered `client_id` or a `client_metadata_url`, not both")
        if cimd and (urlsplit(cimd).scheme != "https" or urlsplit(cimd).path in ("", "/")):
            r.error((*fpath, "client_metadata_url"), "`client_metadata_url` must be an https URL with a path (it is the client's id)", value=True)
        if redirect and not _loopback_uri(redirect):
            r.error((*fpath, "redirect_uri"), "`redirect_uri` must be a loopback URL with a port, such as http://127.0.0.1:8765/callback", value=True)
        return OAuthConfig(client_id=client_id, client_secret=secret, client_metadata_url=cimd,
                           scopes=_scopes(r, o.get("scopes"), (*fpath, "scopes")), redirect_uri=redirect)
    c = r.mapping(a.get("client_credentials"), fpath, _CLIENT_CREDENTIALS, "auth.client_credentials")
    cc_id = r.string(c.get("client_id"), (*fpath, "client_id"))
    cc_secret = r.string(c.get("client_secret"), (*fpath, "client_secret"))
    for key, val in (("client_id", cc_id), ("client_secret", cc_secret)):
        if not val:
            r.error(fpath, f"`client_credentials` needs `{key}`")
    issuer = r.string(c.get("issuer"), (*fpath, "issuer")) or None
    if issuer and urlsplit(issuer).scheme not in ("https", "http"):
        r.error((*fpath, "issuer"), "`issuer` must be the authorization server's https URL", value=True)
    return ClientCredentialsConfig(client_id=cc_id or "", client_secret=cc_secret or "",
                                   scopes=_scopes(r, c.get("scopes"), (*fpath, "scopes")), issuer=issuer)


def parse_config(text: str, file: str, *, environ: Mapping[str, str] | None = None) -> GuardConfig:
    """Parse guard.yaml text; raises ``ConfigError`` listing every problem."""
    env = os.environ if environ is None else environ
    source = Path(file).resolve()
    base = source.parent
    try:
        data, smap = load(text, file)
    except YamlSyntaxError as exc:
        raise ConfigError(str(exc.problem), [str(exc.problem)]) from None
    r = _Reader(smap, env)
    top = r.mapping(data, (), _TOP, "guard.yaml")
    if data is None:
        r.error((), "guard.yaml is empty", "start with `version: 1`")
    version = top.get("version")
    if version != 1 and data is not None:
        r.error(("version",), "`version` must be 1", value="version" in top)

    upstreams: dict[str, UpstreamConfig] = {}
    advisories: list[Problem] = []
    ups = r.mapping(top.get("upstreams"), ("upstreams",), set(top.get("upstreams") or {}), "upstreams")
    for name, spec in ups.items():
        path: YPath = ("upstreams", name)
        if not isinstance(name, str) or not UPSTREAM_NAME.match(name):
            r.error(path, f"upstream name `{name}` must match [A-Za-z0-9_-]{{1,32}}")
            continue
        u = r.mapping(spec, path, _UPSTREAM, f"upstream `{name}`")
        command = r.string(u.get("command"), (*path, "command"))
        url = r.string(u.get("url"), (*path, "url"))
        if (command is None) == (url is None):
            r.error(path, f"upstream `{name}` needs exactly one of `command` (stdio) or `url` (Streamable HTTP)")
        args_raw = u.get("args") or []
        if not isinstance(args_raw, list):
            r.error((*path, "args"), "`args` must be a list of strings", value=True)
            args_raw = []
        args = tuple(r.string(a, (*path, "args", i)) or "" for i, a in enumerate(args_raw))
        passthrough_raw = u.get("env_passthrough") or []
        if not isinstance(passthrough_raw, list):
            r.error((*path, "env_passthrough"), "`env_passthrough` must be a list of variable names (NAME or PREFIX*)", value=True)
            passthrough_raw = []
        passthrough = tuple(r.string(a, (*path, "env_passthrough", i), expand_env=False) or "" for i, a in enumerate(passthrough_raw))
        for i, pattern in enumerate(passthrough):
            if not ENV_PATTERN.match(pattern):
                r.error((*path, "env_passthrough", i), f"`{pattern}` is not a variable name or a PREFIX* pattern", value=True)
        env_map = {str(k): r.string(v, (*path, "env", k)) or "" for k, v in (r.mapping(u.get("env"), (*path, "env"), set(u.get("env") or {}), "env")).items()}
        headers = {str(k): r.string(v, (*path, "headers", k)) or "" for k, v in (r.mapping(u.get("headers"), (*path, "headers"), set(u.get("headers") or {}), "headers")).items()}
        roots_raw = u.get("roots")
        roots: RootsMode = "none"
        if isinstance(roots_raw, list):
            roots = tuple(str(_resolve(base, r.string(p, (*path, "roots", i)) or ".")) for i, p in enumerate(roots_raw))
        elif roots_raw is not None:
            roots = "pass" if r.choice(roots_raw, (*path, "roots"), ("pass", "none"), "none") == "pass" else "none"
        cwd = r.string(u.get("cwd"), (*path, "cwd"))
        if command:
            advisories.extend(_command_problems(smap, (*path, "command"), command, _resolve(base, cwd) if cwd else base, env_map, env))
        workdir = r.string(u.get("workdir"), (*path, "workdir"))
        resolve = r.boolean(u.get("resolve"), (*path, "resolve"), False)
        if resolve and url is not None:
            r.error((*path, "resolve"), "`resolve` needs a local (stdio) upstream: the guard cannot see the disk of a remote server",
                    "remove it, or declare `workdir` only", value=True)
        # never guessed from `cwd`: servers resolve relative paths their own way (server-filesystem
        # against its first allowed directory), and a wrong guess would place a path past a deny
        workdir_path = _resolve(base, workdir) if workdir else None
        auth = _parse_auth(r, u.get("auth"), (*path, "auth"), url, headers) if "auth" in u else None
        upstreams[name] = UpstreamConfig(
            name=name,
            command=command,
            args=args,
            env=env_map,
            cwd=str(_resolve(base, cwd)) if cwd else str(base),
            url=url,
            headers=headers,
            prefix=r.boolean(u.get("prefix"), (*path, "prefix"), True),
            roots=roots,
            timeout=r.duration(u.get("timeout"), (*path, "timeout"), DEFAULT_TIMEOUT),
            startup_timeout=r.duration(u.get("startup_timeout"), (*path, "startup_timeout"), DEFAULT_STARTUP_TIMEOUT),
            env_passthrough=passthrough,
            trust_annotations=r.boolean(u.get("trust_annotations"), (*path, "trust_annotations"), False),
            protocol=r.choice(u.get("protocol"), (*path, "protocol"), ("legacy", "auto", "modern"), "legacy"),  # type: ignore[arg-type]
            workdir=str(workdir_path) if workdir_path is not None else None,
            resolve=resolve and url is None,
            auth=auth,
            required=r.boolean(u.get("required"), (*path, "required"), False),
        )

    pol_raw = top.get("policies")
    pol_list = pol_raw if isinstance(pol_raw, list) else ([] if pol_raw is None else [pol_raw])
    policies: list[Path] = []
    for i, p in enumerate(pol_list):
        ppath: YPath = ("policies", i) if isinstance(pol_raw, list) else ("policies",)
        text_p = r.string(p, ppath)
        if text_p:
            resolved = _resolve(base, text_p)
            if not resolved.exists():
                r.error(ppath, f"policy path {text_p} does not exist", value=True)
            policies.append(resolved)

    ident = r.mapping(top.get("identity"), ("identity",), _IDENTITY, "identity")
    identity = IdentityConfig(
        user=r.string(ident.get("user"), ("identity", "user")) or None,
        agent=r.string(ident.get("agent"), ("identity", "agent")) or None,
        purpose=r.string(ident.get("purpose"), ("identity", "purpose")) or None,
        grant=r.string(ident.get("grant"), ("identity", "grant")) or None,
    )

    tr = r.mapping(top.get("trust"), ("trust",), _TRUST, "trust")
    issuers_raw = r.mapping(tr.get("issuers"), ("trust", "issuers"), set(tr.get("issuers") or {}), "trust.issuers")
    issuers: dict[str, Path] = {}
    for iss, key_path in issuers_raw.items():
        kp = r.string(key_path, ("trust", "issuers", iss))
        if kp:
            resolved = _resolve(base, kp)
            if not resolved.exists():
                r.error(("trust", "issuers", iss), f"key file {kp} for issuer `{iss}` does not exist", value=True)
            elif (why := _public_key_problem(resolved, kp)) is not None:
                r.error(("trust", "issuers", iss), f"key file for issuer `{iss}`: {why}", value=True)
            issuers[str(iss)] = resolved
    trust = TrustConfig(issuers=issuers, audience=r.string(tr.get("audience"), ("trust", "audience")) or DEFAULT_AUDIENCE)

    ap = r.mapping(top.get("approvals"), ("approvals",), _APPROVALS, "approvals")
    approvals = ApprovalsConfig(
        timeout=r.duration(ap.get("timeout"), ("approvals", "timeout"), 120.0),
        remember="session" if r.choice(ap.get("remember"), ("approvals", "remember"), ("none", "session"), "none") == "session" else "none",
        state_key=r.string(ap.get("state_key"), ("approvals", "state_key")) or None,
    )
    if approvals.state_key is not None and len(approvals.state_key) < 32:
        r.error(("approvals", "state_key"), "`state_key` must be at least 32 characters of secret", value=True)

    fl = r.mapping(top.get("flow"), ("flow",), {"max_content_mib"}, "flow")
    mib = fl.get("max_content_mib", 16.0)
    if isinstance(mib, bool) or not isinstance(mib, int | float) or not 0 < mib <= 1024:
        r.error(("flow", "max_content_mib"), "`max_content_mib` must be a number of MiB above 0 and at most 1024", value=True)
        mib = 16.0
    flow = FlowConfig(float(mib))

    au = r.mapping(top.get("audit"), ("audit",), _AUDIT, "audit")
    audit_path = r.string(au.get("path"), ("audit", "path"))
    max_bytes = au.get("max_bytes")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        r.error(("audit", "max_bytes"), "`max_bytes` must be a positive integer", value=True)
        max_bytes = None
    audit = AuditConfig(
        path=None if not audit_path else ("-" if audit_path == "-" else str(_resolve(base, audit_path))),
        fsync=r.boolean(au.get("fsync"), ("audit", "fsync"), False),
        include_args=r.boolean(au.get("include_args"), ("audit", "include_args"), False),
        max_bytes=max_bytes,
    )

    pinning = r.choice(top.get("pinning"), ("pinning",), ("off", "warn", "enforce"), "warn")
    lock = r.string(top.get("lock_file"), ("lock_file",))

    st = r.mapping(top.get("state"), ("state",), _STATE, "state")
    state_url = r.string(st.get("url"), ("state", "url")) or DEFAULT_STATE_URL
    if not state_url.startswith(("sqlite://", "redis://", "rediss://", "memory://")):
        r.error(("state", "url"), "`state.url` must start with sqlite://, redis:// or memory://", value=True)

    te = r.mapping(top.get("telemetry"), ("telemetry",), _TELEMETRY, "telemetry")
    telemetry = TelemetryConfig(**{k: r.string(te.get(k), ("telemetry", k)) for k in sorted(_TELEMETRY)})

    serve = _parse_serve(r, top.get("serve"), base, trust)
    tokens = _token_dir(resolve_state_url(state_url, base), base) / _file_safe(identity.user or env.get("USER") or env.get("LOGNAME") or "default")
    for name, up in upstreams.items():
        if up.auth is not None:
            upstreams[name] = replace(up, token_file=str(tokens / f"{name}.token"), browser=browser_command(env))

    errors = [p for p in r.problems if p.severity == "error"]
    if errors:
        ordered = sorted([*r.problems, *advisories], key=lambda p: (p.line, p.col))
        raise ConfigError(f"{file}: invalid configuration ({len(errors)} problems)", [str(p) for p in ordered])
    return GuardConfig(
        source=source,
        upstreams=upstreams,
        policies=tuple(policies),
        identity=identity,
        trust=trust,
        approvals=approvals,
        audit=audit,
        pinning=pinning,  # type: ignore[arg-type]
        lock_file=_resolve(base, lock) if lock else base / "guard.lock",
        state_url=resolve_state_url(state_url, base),
        telemetry=telemetry,
        serve=serve,
        flow=flow,
        advisories=tuple(str(p) for p in advisories),
    )


def _http_url(r: _Reader, raw: Any, path: YPath, what: str) -> str | None:
    """An absolute http(s) URL without fragment; ``http://`` only on a loopback host."""
    from urllib.parse import urlsplit

    text = r.string(raw, path)
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        r.error(path, f"{what} must be an absolute https:// URL without a #fragment", value=True)
        return None
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        r.error(path, f"{what} must use https:// (http:// is accepted only on 127.0.0.1, localhost or ::1)", value=True)
        return None
    return text


def _string_list(r: _Reader, raw: Any, path: YPath) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.error(path, f"`{path[-1]}` must be a list of strings", value=True)
        return ()
    return tuple(s for i, v in enumerate(raw) if (s := r.string(v, (*path, i))))


def _parse_serve(r: _Reader, raw: Any, base: Path, trust: TrustConfig) -> ServeConfig:
    """The ``serve:`` block (only ``mcp-guard serve`` reads it)."""
    sv = r.mapping(raw, ("serve",), _SERVE, "serve")
    url = _http_url(r, sv.get("url"), ("serve", "url"), "`serve.url`")
    issuers: list[OAuthIssuerConfig] = []
    oauth_raw = sv.get("oauth")
    if oauth_raw is not None and not isinstance(oauth_raw, list):
        r.error(("serve", "oauth"), "`serve.oauth` must be a list of authorization servers (`- issuer: https://...`)", value=True)
        oauth_raw = []
    for i, item in enumerate(oauth_raw or []):
        path: YPath = ("serve", "oauth", i)
        o = r.mapping(item, path, _SERVE_OAUTH, "serve.oauth entry")
        issuer = _http_url(r, o.get("issuer"), (*path, "issuer"), "`issuer`")
        if "issuer" not in o:
            r.error(path, "each serve.oauth entry needs `issuer`")
        audience = r.string(o.get("audience"), (*path, "audience")) or url
        if audience is None and issuer is not None:
            r.error(path, "set `serve.url` (the canonical resource URI tokens must be issued for) or this entry's `audience`")
        if issuer and audience:
            issuers.append(OAuthIssuerConfig(
                issuer=issuer,
                audience=audience,
                scopes=_string_list(r, o.get("scopes"), (*path, "scopes")),
                user=r.string(o.get("user"), (*path, "user")) or "sub",
                agent=r.string(o.get("agent"), (*path, "agent")) or None,
                purpose=r.string(o.get("purpose"), (*path, "purpose")) or None,
            ))
    exchange = None
    if sv.get("token_exchange") is not None:
        tpath: YPath = ("serve", "token_exchange")
        te = r.mapping(sv.get("token_exchange"), tpath, _TOKEN_EXCHANGE, "serve.token_exchange")
        key = r.string(te.get("key"), (*tpath, "key"))
        te_issuer = r.string(te.get("issuer"), (*tpath, "issuer"))
        if not key or not te_issuer:
            r.error(tpath, "`token_exchange` needs `key` (the issuer's private key) and `issuer` (its name in trust.issuers)")
        elif te_issuer not in trust.issuers:
            r.error((*tpath, "issuer"), f"issuer `{te_issuer}` must also be listed in trust.issuers so the roots it signs verify",
                    did_you_mean(te_issuer, list(trust.issuers)), value=True)
        elif not _resolve(base, key).exists():
            r.error((*tpath, "key"), f"key file {key} does not exist", value=True)
        elif url is None:
            if sv.get("url") is None:  # (a `url` given but invalid has its own error)
                r.error(tpath, "`token_exchange` needs `serve.url`: the roots it issues name it as their audience")
        else:
            exchange = TokenExchangeConfig(key=_resolve(base, key), issuer=te_issuer, ttl=r.duration(te.get("ttl"), (*tpath, "ttl"), 3600.0))
    page = _parse_approval_page(r, sv.get("approvals"), issuers) if sv.get("approvals") is not None else None
    counts: dict[str, int] = {}
    for name, default in (("max_sessions_per_principal", 64), ("max_sessions_per_root", 256), ("max_sessions", 10000),
                          ("max_body", 4 * 1024 * 1024)):
        value = sv.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            r.error(("serve", name), f"`{name}` must be a positive integer", value=True)
            value = default
        counts[name] = value
    return ServeConfig(
        url=url,
        oauth=tuple(issuers),
        allowed_hosts=_string_list(r, sv.get("allowed_hosts"), ("serve", "allowed_hosts")),
        max_sessions_per_principal=counts["max_sessions_per_principal"],
        max_sessions_per_root=counts["max_sessions_per_root"],
        max_sessions=counts["max_sessions"],
        session_idle=r.duration(sv.get("session_idle"), ("serve", "session_idle"), 1800.0),
        max_body=counts["max_body"],
        token_exchange=exchange,
        approvals=page,
        admin=_parse_admin(r, sv.get("admin")) if sv.get("admin") is not None else None,
        drain_timeout=r.duration(sv.get("drain_timeout"), ("serve", "drain_timeout"), 20.0),
    )


def _parse_admin(r: _Reader, raw: Any) -> AdminConfig | None:
    """``serve.admin: {listen: HOST:PORT}`` (``[::1]:9464`` for IPv6)."""
    path: YPath = ("serve", "admin")
    ad = r.mapping(raw, path, _ADMIN, "serve.admin")
    listen = r.string(ad.get("listen"), (*path, "listen"))
    if not listen:
        r.error(path, "`serve.admin` needs `listen: HOST:PORT` (e.g. 127.0.0.1:9464)")
        return None
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        r.error((*path, "listen"), f"`listen` must be HOST:PORT with a port from 1 to 65535, not {listen!r}", value=True)
        return None
    return AdminConfig(host=host, port=int(port))


def _parse_approval_page(r: _Reader, raw: Any, issuers: list[OAuthIssuerConfig]) -> ApprovalPageConfig | None:
    """``serve.approvals``: sign-in at one of the ``serve.oauth`` issuers (the only one by default)."""
    path: YPath = ("serve", "approvals")
    ap = r.mapping(raw, path, _APPROVAL_PAGE, "serve.approvals")
    known = {i.issuer: i for i in issuers}
    issuer = _http_url(r, ap.get("issuer"), (*path, "issuer"), "`issuer`") if ap.get("issuer") is not None else None
    if issuer is None and ap.get("issuer") is None:
        if len(known) != 1:
            r.error(path, "`serve.approvals` needs `issuer` (one of the serve.oauth issuers) when serve.oauth does not list exactly one")
            return None
        issuer = next(iter(known))
    if issuer is None:
        return None
    if issuer not in known:
        r.error((*path, "issuer"), f"issuer {issuer} must also be listed in serve.oauth: approvers sign in through the same issuer "
                "as callers", did_you_mean(issuer, list(known)), value=True)
        return None
    client_id = r.string(ap.get("client_id"), (*path, "client_id"))
    if not client_id:
        r.error(path, "`serve.approvals` needs `client_id` (the guard's own client at the issuer, for the approval page)")
        return None
    scopes = _string_list(r, ap.get("scopes"), (*path, "scopes")) or ("openid", "profile", "email")
    if "openid" not in scopes:
        r.error((*path, "scopes"), "`scopes` must include openid: the page needs an ID token naming the approver", value=True)
    return ApprovalPageConfig(
        issuer=issuer,
        client_id=client_id,
        client_secret=r.string(ap.get("client_secret"), (*path, "client_secret")) or None,
        approvers=_string_list(r, ap.get("approvers"), (*path, "approvers")),
        scopes=scopes,
        user=known[issuer].user,
        session_ttl=r.duration(ap.get("session_ttl"), (*path, "session_ttl"), 600.0),
    )


def _public_key_problem(path: Path, shown: str) -> str | None:
    """Why ``path`` is not an Ed25519 public key (a private key, garbage, unreadable), or None."""
    from mcp_guard.grants import GrantError, load_public_key

    try:
        load_public_key(path)
    except GrantError as exc:
        return str(exc).replace(str(path), shown)
    return None


def _command_problems(smap: SourceMap, at: YPath, command: str, cwd: Path, env: Mapping[str, str],
                      environ: Mapping[str, str]) -> list[Problem]:
    """An upstream command with a path that does not exist (or cannot run) is an error; a bare
    command not found on PATH only a warning, since the host that launches the guard may have
    another PATH (the upstream's own ``env.PATH`` first, then this environment's)."""
    if "/" in command or (os.sep != "/" and os.sep in command):
        p = Path(os.path.expanduser(command))
        p = p if p.is_absolute() else cwd / p
        if not p.exists():
            return [smap.problem(at, f"upstream command {command} does not exist", "write the path of an installed server")]
        if p.is_dir() or not os.access(p, os.X_OK):
            return [smap.problem(at, f"upstream command {command} is not an executable file")]
        return []
    search = env.get("PATH") or environ.get("PATH") or ""
    if shutil.which(command, path=search) is None:
        return [smap.problem(
            at, f"upstream command `{command}` is not on PATH here", "the host's PATH may differ; an absolute path is certain",
            "warning",
        )]
    return []


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> GuardConfig:
    """Read and parse guard.yaml."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    return parse_config(text, str(path), environ=environ)


def default_config(environ: Mapping[str, str] | None = None) -> GuardConfig:
    """The configuration used when no guard.yaml is given (inline ``run -- COMMAND``)."""
    env = os.environ if environ is None else environ
    return GuardConfig(
        identity=IdentityConfig(user=env.get("USER") or env.get("LOGNAME"), grant=env.get("MCP_GUARD_GRANT") or None),
        state_url=resolve_state_url(DEFAULT_STATE_URL, Path.cwd()),
    )


def _signal_endpoint(base: str, signal: str) -> str:
    return base.rstrip("/") + f"/v1/{signal}"


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def _exporter_name(value: str | None, var: str, has_endpoint: bool) -> str:
    """The exporter for one signal; unset means ``otlp`` when an endpoint is configured, else none."""
    from mcp_guard.telemetry.settings import EXPORTERS

    if value is None or not value.strip():
        return "otlp" if has_endpoint else "none"
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in EXPORTERS:
            raise ConfigError(f"{var}: unknown exporter {n!r}; use one of otlp, console, none")
    chosen = [n for n in names if n != "none"]
    if len(chosen) > 1:
        raise ConfigError(f"{var}: only one exporter at a time is supported, got {value!r}")
    return chosen[0] if chosen else "none"


def telemetry_settings(config: TelemetryConfig | None = None, environ: Mapping[str, str] | None = None) -> TelemetrySettings:
    """The effective telemetry settings: the ``telemetry:`` block over the standard ``OTEL_*``
    variables; raises ``ConfigError`` naming the variable or key that is wrong."""
    from mcp_guard.telemetry.settings import (
        COMPONENT,
        DEFAULT_BATCH,
        DEFAULT_DELAY,
        DEFAULT_EXPORT_TIMEOUT,
        DEFAULT_METRIC_INTERVAL,
        DEFAULT_QUEUE,
        DEFAULT_SAMPLER,
    )
    from mcp_guard.telemetry.settings import Settings as TelemetrySettings

    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TelemetrySettings()
    base = (config.endpoint if config else None) or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    traces_ep = (_signal_endpoint(config.endpoint, "traces") if config and config.endpoint else None) or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ) or (_signal_endpoint(base, "traces") if base else None)
    metrics_ep = (_signal_endpoint(config.endpoint, "metrics") if config and config.endpoint else None) or env.get(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ) or (_signal_endpoint(base, "metrics") if base else None)
    traces_var = "telemetry.traces_exporter" if config and config.traces_exporter else "OTEL_TRACES_EXPORTER"
    metrics_var = "telemetry.metrics_exporter" if config and config.metrics_exporter else "OTEL_METRICS_EXPORTER"
    traces = _exporter_name((config.traces_exporter if config else None) or env.get("OTEL_TRACES_EXPORTER"), traces_var,
                            traces_ep is not None)
    metrics = _exporter_name((config.metrics_exporter if config else None) or env.get("OTEL_METRICS_EXPORTER"),
                             metrics_var, metrics_ep is not None)
    timeout_var = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" if env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") else "OTEL_EXPORTER_OTLP_TIMEOUT"
    return TelemetrySettings(
        traces=traces,
        metrics=metrics,
        traces_endpoint=traces_ep,
        metrics_endpoint=metrics_ep,
        service_name=(config.service_name if config else None) or env.get("OTEL_SERVICE_NAME") or COMPONENT,
        # the spec's timeout variables are in seconds for OTLP, milliseconds for the batch processor
        timeout=_positive(env, timeout_var, DEFAULT_EXPORT_TIMEOUT),
        max_queue_size=int(_positive(env, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)),
        max_batch_size=int(_positive(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH)),
        schedule_delay=_positive(env, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY * 1000) / 1000,
        metric_interval=_positive(env, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_METRIC_INTERVAL * 1000) / 1000,
        sampler=env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER,
        sampler_arg=env.get("OTEL_TRACES_SAMPLER_ARG", "").strip(),
    )


def _token_dir(state_url: str, base: Path) -> Path:
    """Where upstream OAuth tokens live: ``tokens/`` beside the sqlite state database (else in
    ``.mcp-guard/`` beside guard.yaml): machine-local, never in a shared store."""
    if state_url.startswith("sqlite:///"):
        return Path(state_url[len("sqlite:///"):]).parent / "tokens"
    return base / ".mcp-guard" / "tokens"


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name).lstrip(".") or "default"


def browser_command(environ: Mapping[str, str] | None = None) -> str | None:
    """``$BROWSER``: when set, ``run`` may open an authorization page itself (else it asks for ``login``)."""
    env = os.environ if environ is None else environ
    return env.get("BROWSER") or None


def has_browser(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``login`` should open a browser: ``$BROWSER``, or a desktop session (never a
    console browser taking over the terminal the URL is printed on)."""
    env = os.environ if environ is None else environ
    return bool(env.get("BROWSER") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32"))
def upstream_proxied(url: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (minus ``NO_PROXY``) apply to an HTTP
    upstream's URL: such an upstream is reached through httpx2, which speaks to proxies."""
    env = os.environ if environ is None else environ
    lowered = {k.lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    u = urlsplit(url)
    if not (lowered.get(f"{u.scheme}_proxy") or lowered.get("all_proxy")):
        return False
    no_proxy = lowered.get("no_proxy", "")
    if no_proxy == "*":
        return False
    host = u.hostname or ""
    for entry in (e.strip().lower() for e in no_proxy.split(",") if e.strip()):
        bare = entry.lstrip(".").split(":")[0]
        if host == bare or host.endswith("." + bare):
            return False
    return True


def upstream_environment(config: UpstreamConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A stdio upstream's whole environment: the essentials (``CHILD_ENV``), what its
    ``env_passthrough`` names, then its own ``env``.  Nothing else of the guard's environment — other
    upstreams' tokens, telemetry credentials, the approvals key — and never ``MCP_GUARD_*``."""
    env = os.environ if environ is None else environ
    patterns = CHILD_ENV + (CHILD_ENV_WINDOWS if os.name == "nt" else ()) + config.env_passthrough
    names = {p for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    out = {k: v for k, v in env.items() if (k in names or k.startswith(prefixes)) and not k.startswith("MCP_GUARD_")}
    out.update(config.env)
    return out


def check_grant_variable(config: GuardConfig, environ: Mapping[str, str] | None = None) -> None:
    """``MCP_GUARD_GRANT`` set for a guard.yaml without a grant would be ignored, and the agent would
    run with the configuration's wider authority: refuse to start instead."""
    env = os.environ if environ is None else environ
    if env.get("MCP_GUARD_GRANT", "").strip() and not config.identity.grant:
        where = str(config.source) if config.source is not None else "the configuration"
        raise ConfigError(
            f"{where}: MCP_GUARD_GRANT is set but identity.grant is not, so the grant chain would be ignored "
            "and the agent would run with the configuration's own authority; add `grant: ${MCP_GUARD_GRANT}` "
            "under `identity:` (or unset MCP_GUARD_GRANT)"
        )


def read_token(value: str) -> str:
    """A grant chain given literally or as ``@file`` (a file holding it); an unreadable file is a ConfigError."""
    if not value.startswith("@"):
        return value.strip()
    try:
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the grant chain {value[1:]}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- policy sources


def iter_policy_files(path: Path) -> Iterator[Path]:
    """A file, or every ``*.yaml``/``*.yml`` in a directory tree (sorted), skipping ``*.test.yaml`` and
    anything under an ``examples/`` folder (examples to copy, never policies in force by being there)."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.suffix in (".yaml", ".yml") and not p.name.endswith((".test.yaml", ".test.yml")) and p.is_file() \
                    and "examples" not in p.relative_to(path).parts[:-1]:
                yield p
    else:
        yield path


def iter_policy_test_files(path: Path) -> Iterator[Path]:
    """``*.test.yaml`` files under a directory (or the file itself)."""
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.name.endswith((".test.yaml", ".test.yml")) and p.is_file())
    else:
        yield path


def read_sources(paths: Iterator[Path] | list[Path] | tuple[Path, ...], display: Callable[[Path], str] | None = None) -> list[tuple[str, str]]:
    """``[(display name, text)]`` for the policy parser; unreadable files raise ConfigError."""
    out: list[tuple[str, str]] = []
    show = display or (lambda p: os.path.relpath(p) if p.is_absolute() else str(p))
    problems: list[str] = []
    for p in paths:
        try:
            out.append((show(p), p.read_text(encoding="utf-8")))
        except OSError as exc:
            problems.append(f"{show(p)}:1:1: cannot read: {exc.strerror or exc}")
    if problems:
        raise ConfigError(problems[0], problems)
    return out


def policy_sources(paths: tuple[Path, ...] | list[Path]) -> list[tuple[str, str]]:
    """Every policy document under ``paths`` (files or directories), ready for ``policy.load_sources``."""
    files: list[Path] = []
    for p in paths:
        files.extend(iter_policy_files(p))
    return read_sources(files)
