"""guard.yaml: the only module that reads configuration files and the environment.

Every problem is reported at once as ``file:line:col: message`` (with a "did you mean" hint for
near-miss keys); a config with any error never starts a guard.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcp_guard.errors import ConfigError
from mcp_guard.paths import PathContext
from mcp_guard.yamlsrc import Path as YPath
from mcp_guard.yamlsrc import SourceMap, SourceReader, YamlSyntaxError, did_you_mean, load

DEFAULT_AUDIENCE = "urn:mcp-guard:local"
DEFAULT_STATE_URL = "sqlite:///.mcp-guard/state.db"
EXPOSED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

RootsMode = Literal["pass", "none"] | tuple[str, ...]


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
    timeout: float = 300.0
    trust_annotations: bool = False
    protocol: Literal["legacy", "auto", "modern"] = "legacy"  # the era the guard speaks to it
    workdir: str | None = None  # where the upstream resolves relative paths (absolute), if declared
    resolve: bool = False  # resolve symlinks on the guard's disk before `under` judges a path (local only)
    paths: PathContext = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", PathContext(self.workdir, resolve_path if self.resolve else None))

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


_TOP = {"version", "upstreams", "policies", "identity", "trust", "approvals", "audit", "pinning", "state", "telemetry", "lock_file"}
_UPSTREAM = {"command", "args", "env", "cwd", "url", "headers", "prefix", "roots", "timeout", "trust_annotations", "protocol",
             "workdir", "resolve"}
_IDENTITY = {"user", "agent", "purpose", "grant"}
_TRUST = {"issuers", "audience"}
_APPROVALS = {"timeout", "remember", "state_key"}
_AUDIT = {"path", "fsync", "include_args", "max_bytes"}
_STATE = {"url"}
_TELEMETRY = {"traces_exporter", "metrics_exporter", "endpoint", "service_name"}


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
        env_map = {str(k): r.string(v, (*path, "env", k)) or "" for k, v in (r.mapping(u.get("env"), (*path, "env"), set(u.get("env") or {}), "env")).items()}
        headers = {str(k): r.string(v, (*path, "headers", k)) or "" for k, v in (r.mapping(u.get("headers"), (*path, "headers"), set(u.get("headers") or {}), "headers")).items()}
        roots_raw = u.get("roots")
        roots: RootsMode = "none"
        if isinstance(roots_raw, list):
            roots = tuple(str(_resolve(base, r.string(p, (*path, "roots", i)) or ".")) for i, p in enumerate(roots_raw))
        elif roots_raw is not None:
            roots = "pass" if r.choice(roots_raw, (*path, "roots"), ("pass", "none"), "none") == "pass" else "none"
        cwd = r.string(u.get("cwd"), (*path, "cwd"))
        workdir = r.string(u.get("workdir"), (*path, "workdir"))
        resolve = r.boolean(u.get("resolve"), (*path, "resolve"), False)
        if resolve and url is not None:
            r.error((*path, "resolve"), "`resolve` needs a local (stdio) upstream: the guard cannot see the disk of a remote server",
                    "remove it, or declare `workdir` only", value=True)
        # never guessed from `cwd`: servers resolve relative paths their own way (server-filesystem
        # against its first allowed directory), and a wrong guess would place a path past a deny
        workdir_path = _resolve(base, workdir) if workdir else None
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
            timeout=r.duration(u.get("timeout"), (*path, "timeout"), 300.0),
            trust_annotations=r.boolean(u.get("trust_annotations"), (*path, "trust_annotations"), False),
            protocol=r.choice(u.get("protocol"), (*path, "protocol"), ("legacy", "auto", "modern"), "legacy"),  # type: ignore[arg-type]
            workdir=str(workdir_path) if workdir_path is not None else None,
            resolve=resolve and url is None,
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

    errors = [p for p in r.problems if p.severity == "error"]
    if errors:
        ordered = sorted(r.problems, key=lambda p: (p.line, p.col))
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
    )


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
    """A file, or every ``*.yaml``/``*.yml`` in a directory tree (sorted), skipping ``*.test.yaml``."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.suffix in (".yaml", ".yml") and not p.name.endswith((".test.yaml", ".test.yml")) and p.is_file():
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
