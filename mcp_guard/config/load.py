"""Reading guard.yaml: expand ``${VAR}``, validate with the document model, check what spans keys
or touches the disk, then resolve into the ``GuardConfig`` the guard runs with.

Every problem is reported at once as ``file:line:col: message`` (with a "did you mean" hint for
near-miss keys); a config with any error never starts a guard.  The rules that span keys run on
the data as written, beside the model's own errors, so one pass shows every mistake.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mcp_guard.config.document import AuthDoc, GuardDoc, OAuthDoc, ServeDoc
from mcp_guard.config.env import browser_command
from mcp_guard.config.model import (
    DEFAULT_AUDIENCE,
    DEFAULT_STATE_URL,
    AdminConfig,
    ApprovalPageConfig,
    ApprovalsConfig,
    AuditConfig,
    ClientCredentialsConfig,
    FlowConfig,
    GuardConfig,
    IdentityConfig,
    OAuthConfig,
    OAuthIssuerConfig,
    RootsMode,
    ServeConfig,
    TelemetryConfig,
    TokenExchangeConfig,
    TrustConfig,
    UpstreamAuth,
    UpstreamConfig,
    expand,
    resolve_state_url,
)
from mcp_guard.errors import ConfigError
from mcp_guard.typedoc import fields_at, report
from mcp_guard.yamlsrc import Path as YPath
from mcp_guard.yamlsrc import Problem, SourceReader, YamlSyntaxError, did_you_mean, load


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


def parse_config(text: str, file: str, *, environ: Mapping[str, str] | None = None) -> GuardConfig:
    """Parse guard.yaml text; raises ``ConfigError`` listing every problem."""
    env = os.environ if environ is None else environ
    source = Path(file).resolve()
    try:
        data, smap = load(text, file)
    except YamlSyntaxError as exc:
        raise ConfigError(str(exc.problem), [str(exc.problem)]) from None
    r = SourceReader(smap)
    if data is None:
        r.error((), "guard.yaml is empty", "start with `version: 1`")
        raise ConfigError(f"{file}: invalid configuration (1 problems)", [str(p) for p in r.problems])
    data = _expanded(data, (), r, env)
    doc: GuardDoc | None = None
    try:
        doc = GuardDoc.model_validate(data)
    except ValidationError as exc:
        report(exc, GuardDoc, r, _what)
    advisories: list[Problem] = []
    if isinstance(data, dict):
        _check(r, data, source.parent, env, advisories)
    errors = [p for p in r.problems if p.severity == "error"]
    if errors or doc is None:
        ordered = sorted([*r.problems, *advisories], key=lambda p: (p.line, p.col))
        raise ConfigError(f"{file}: invalid configuration ({len(errors)} problems)", [str(p) for p in ordered])
    return _build(doc, source, env, tuple(str(p) for p in advisories))


# --------------------------------------------------------------------------- as written


def _what(path: YPath) -> str:
    """How messages name the mapping at ``path``."""
    if not path:
        return "guard.yaml"
    if path[0] == "upstreams" and len(path) >= 2:
        return f"upstream `{path[1]}`" if len(path) == 2 else ".".join(str(p) for p in path[2:] if isinstance(p, str))
    words = ".".join(str(p) for p in path if isinstance(p, str))
    return f"{words} entry" if isinstance(path[-1], int) else words


def _expanded(data: Any, path: YPath, r: SourceReader, environ: Mapping[str, str]) -> Any:
    """``data`` with ``${VAR}`` expanded in every string (variable names in ``env_passthrough`` aside),
    and ``key: null`` read as the key left out (an unknown key stays, to be reported)."""
    if isinstance(data, dict):
        known = fields_at(GuardDoc, path)
        return {k: _expanded(v, (*path, k), r, environ) for k, v in data.items()
                if v is not None or known is None or k not in known.model_fields}
    if isinstance(data, list):
        if len(path) == 3 and path[0] == "upstreams" and path[2] == "env_passthrough":
            return data
        return [_expanded(v, (*path, i), r, environ) for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data
    text, missing = expand(data, environ)
    for name in missing:
        r.error(path, f"environment variable {name} is not set", f"set it, or write ${{{name}:-default}}")
    return text


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value) else None


def _resolve(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else (base / p).resolve()


def _check(r: SourceReader, data: dict[Any, Any], base: Path, environ: Mapping[str, str], advisories: list[Problem]) -> None:
    """The rules that span keys or look at the disk, on the data as written."""
    for name, spec in _mapping(data.get("upstreams")).items():
        if spec is None or isinstance(spec, dict):
            _check_upstream(r, name, spec or {}, base, environ, advisories)
    raw = data.get("policies")
    for i, p in enumerate(raw if isinstance(raw, list) else [] if raw is None else [raw]):
        if (text := _text(p)) and not _resolve(base, text).exists():
            r.error(("policies", i) if isinstance(raw, list) else ("policies",), f"policy path {text} does not exist")
    trust = _mapping(data.get("trust"))
    for issuer, key in _mapping(trust.get("issuers")).items():
        if (kp := _text(key)) is None:
            continue
        resolved = _resolve(base, kp)
        if not resolved.exists():
            r.error(("trust", "issuers", issuer), f"key file {kp} for issuer `{issuer}` does not exist")
        elif (why := _public_key_problem(resolved, kp)) is not None:
            r.error(("trust", "issuers", issuer), f"key file for issuer `{issuer}`: {why}")
    _check_serve(r, _mapping(data.get("serve")), base, set(_mapping(trust.get("issuers"))))


def _check_upstream(r: SourceReader, name: Any, u: dict[Any, Any], base: Path, environ: Mapping[str, str],
                    advisories: list[Problem]) -> None:
    path: YPath = ("upstreams", name)
    command, url = _text(u.get("command")), u.get("url")
    if (u.get("command") is None) == (url is None):
        r.error(path, f"upstream `{name}` needs exactly one of `command` (stdio) or `url` (Streamable HTTP)", value=False)
    if u.get("resolve") is True and url is not None:
        r.error((*path, "resolve"), "`resolve` needs a local (stdio) upstream: the guard cannot see the disk of a remote server",
                "remove it, or declare `workdir` only")
    if command:
        cwd = _text(u.get("cwd"))
        env = {str(k): str(v) for k, v in _mapping(u.get("env")).items()}
        advisories.extend(_command_problems(r, (*path, "command"), command, _resolve(base, cwd) if cwd else base, env, environ))
    if "auth" not in u:
        return
    apath: YPath = (*path, "auth")
    auth = _mapping(u.get("auth"))
    if url is None:
        r.error(apath, "`auth` applies to HTTP upstreams (`url`) only", "a stdio server takes its credentials from `env`", value=False)
        return
    forms = [k for k in ("oauth", "client_credentials") if k in auth]
    if not forms and "headers" not in auth:
        r.error(apath, "`auth` needs one of `oauth`, `client_credentials` or `headers`", value=False)
    elif len(forms) > 1:
        r.error(apath, "`auth` takes one of `oauth` or `client_credentials`, not both", value=False)
    elif forms:
        headers = [*_mapping(u.get("headers")), *_mapping(auth.get("headers"))]
        if any(str(k).lower() == "authorization" for k in headers):
            r.error(apath, f"`auth.{forms[0]}` supplies the Authorization header; remove the static one from `headers`", value=False)
    oauth = _mapping(auth.get("oauth"))
    opath: YPath = (*apath, "oauth")
    if oauth.get("client_secret") and not oauth.get("client_id"):
        r.error((*opath, "client_secret"), "`client_secret` needs the pre-registered `client_id` it belongs to", value=False)
    if oauth.get("client_metadata_url") and oauth.get("client_id"):
        r.error((*opath, "client_metadata_url"), "give either a pre-registered `client_id` or a `client_metadata_url`, not both",
                value=False)


def _check_serve(r: SourceReader, sv: dict[Any, Any], base: Path, trusted: set[Any]) -> None:
    url = sv.get("url")
    oauth: list[Any] = sv["oauth"] if isinstance(sv.get("oauth"), list) else []
    for i, entry in enumerate(oauth):
        if isinstance(entry, dict) and entry.get("issuer") is not None and entry.get("audience") is None and url is None:
            r.error(("serve", "oauth", i), "set `serve.url` (the canonical resource URI tokens must be issued for) or this entry's "
                    "`audience`", value=False)
    te = sv.get("token_exchange")
    if isinstance(te, dict) and (issuer := _text(te.get("issuer"))) and (key := _text(te.get("key"))):
        tpath: YPath = ("serve", "token_exchange")
        if issuer not in trusted:
            r.error((*tpath, "issuer"), f"issuer `{issuer}` must also be listed in trust.issuers so the roots it signs verify",
                    did_you_mean(issuer, [str(t) for t in trusted]))
        elif not _resolve(base, key).exists():
            r.error((*tpath, "key"), f"key file {key} does not exist")
        elif url is None:
            r.error(tpath, "`token_exchange` needs `serve.url`: the roots it issues name it as their audience", value=False)
    page = sv.get("approvals")
    if isinstance(page, dict):
        known = [e["issuer"] for e in oauth if isinstance(e, dict) and isinstance(e.get("issuer"), str)]
        if page.get("issuer") is None and len(known) != 1:
            r.error(("serve", "approvals"), "`serve.approvals` needs `issuer` (one of the serve.oauth issuers) when serve.oauth does "
                    "not list exactly one", value=False)
        elif isinstance(page.get("issuer"), str) and page["issuer"] not in known:
            r.error(("serve", "approvals", "issuer"), f"issuer {page['issuer']} must also be listed in serve.oauth: approvers sign in "
                    "through the same issuer as callers", did_you_mean(page["issuer"], known))


def _public_key_problem(path: Path, shown: str) -> str | None:
    """Why ``path`` is not an Ed25519 public key (a private key, garbage, unreadable), or None."""
    from mcp_guard.grants import GrantError, load_public_key

    try:
        load_public_key(path)
    except GrantError as exc:
        return str(exc).replace(str(path), shown)
    return None


def _command_problems(r: SourceReader, at: YPath, command: str, cwd: Path, env: Mapping[str, str],
                      environ: Mapping[str, str]) -> list[Problem]:
    """An upstream command with a path that does not exist (or cannot run) is an error; a bare
    command not found on PATH only a warning, since the host that launches the guard may have
    another PATH (the upstream's own ``env.PATH`` first, then this environment's)."""
    smap = r.smap
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


# --------------------------------------------------------------------------- resolved


def _build(doc: GuardDoc, source: Path, environ: Mapping[str, str], advisories: tuple[str, ...]) -> GuardConfig:
    """The validated document resolved: paths absolute, defaults filled, token files placed."""
    base = source.parent
    identity = IdentityConfig(**{k: v or None for k, v in (doc.identity.model_dump() if doc.identity else {}).items()})
    trust_doc = doc.trust
    trust = TrustConfig(issuers={k: _resolve(base, v) for k, v in ((trust_doc.issuers if trust_doc else None) or {}).items()},
                        audience=(trust_doc.audience if trust_doc else None) or DEFAULT_AUDIENCE)
    state_url = resolve_state_url(doc.state.url if doc.state else DEFAULT_STATE_URL, base)
    tokens = _token_dir(state_url, base) / _file_safe(identity.user or environ.get("USER") or environ.get("LOGNAME") or "default")
    upstreams: dict[str, UpstreamConfig] = {}
    for name, u in (doc.upstreams or {}).items():
        headers = {**(u.headers or {}), **((u.auth.headers or {}) if u.auth else {})}
        roots: RootsMode = tuple(str(_resolve(base, p or ".")) for p in u.roots) if isinstance(u.roots, tuple) else u.roots
        up = UpstreamConfig(
            name=name, command=u.command, args=u.args, env=dict(u.env or {}), cwd=str(_resolve(base, u.cwd) if u.cwd else base),
            url=u.url, headers=headers, prefix=u.prefix, roots=roots, timeout=u.timeout, startup_timeout=u.startup_timeout,
            env_passthrough=u.env_passthrough, trust_annotations=u.trust_annotations, protocol=u.protocol,
            # never guessed from `cwd`: servers resolve relative paths their own way (server-filesystem
            # against its first allowed directory), and a wrong guess would place a path past a deny
            workdir=str(_resolve(base, u.workdir)) if u.workdir else None, resolve=u.resolve and u.url is None,
            auth=_auth(u.auth), required=u.required,
        )
        if up.auth is not None:
            up = replace(up, token_file=str(tokens / f"{name}.token"), browser=browser_command(environ))
        upstreams[name] = up
    ap, au = doc.approvals, doc.audit
    audit_path = au.path if au else None
    return GuardConfig(
        source=source,
        upstreams=upstreams,
        policies=tuple(_resolve(base, p) for p in doc.policies if p),
        identity=identity,
        trust=trust,
        approvals=ApprovalsConfig(ap.timeout, ap.remember, ap.state_key or None) if ap else ApprovalsConfig(),
        audit=AuditConfig(path=None if not audit_path else ("-" if audit_path == "-" else str(_resolve(base, audit_path))),
                          fsync=au.fsync, include_args=au.include_args, max_bytes=au.max_bytes) if au else AuditConfig(),
        pinning=doc.pinning,
        lock_file=_resolve(base, doc.lock_file) if doc.lock_file else base / "guard.lock",
        state_url=state_url,
        telemetry=TelemetryConfig(**doc.telemetry.model_dump()) if doc.telemetry else TelemetryConfig(),
        serve=_serve(doc.serve, base) if doc.serve else ServeConfig(),
        flow=FlowConfig(doc.flow.max_content_mib) if doc.flow else FlowConfig(),
        advisories=advisories,
    )


def _auth(doc: AuthDoc | None) -> UpstreamAuth | None:
    if doc is None:
        return None
    if (o := doc.oauth) is not None or "oauth" in doc.model_fields_set:
        o = o or OAuthDoc()
        return OAuthConfig(client_id=o.client_id or None, client_secret=o.client_secret or None,
                           client_metadata_url=o.client_metadata_url or None, scopes=o.scopes, redirect_uri=o.redirect_uri or None)
    if (c := doc.client_credentials) is not None:
        return ClientCredentialsConfig(client_id=c.client_id, client_secret=c.client_secret, scopes=c.scopes, issuer=c.issuer or None)
    return None


def _serve(doc: ServeDoc, base: Path) -> ServeConfig:
    issuers = tuple(OAuthIssuerConfig(issuer=o.issuer, audience=o.audience or doc.url or "", scopes=o.scopes, user=o.user or "sub",
                                      agent=o.agent or None, purpose=o.purpose or None) for o in doc.oauth)
    te, page, admin = doc.token_exchange, doc.approvals, doc.admin
    page_issuer = (page.issuer or issuers[0].issuer) if page else None
    return ServeConfig(
        url=doc.url,
        oauth=issuers,
        allowed_hosts=doc.allowed_hosts,
        max_sessions_per_principal=doc.max_sessions_per_principal,
        max_sessions_per_root=doc.max_sessions_per_root,
        max_sessions=doc.max_sessions,
        session_idle=doc.session_idle,
        max_body=doc.max_body,
        token_exchange=TokenExchangeConfig(key=_resolve(base, te.key), issuer=te.issuer, ttl=te.ttl) if te else None,
        approvals=ApprovalPageConfig(
            issuer=page_issuer, client_id=page.client_id, client_secret=page.client_secret or None, approvers=page.approvers,
            scopes=page.scopes or ("openid", "profile", "email"), user=next(i.user for i in issuers if i.issuer == page_issuer),
            session_ttl=page.session_ttl,
        ) if page and page_issuer else None,
        admin=_admin(admin.listen) if admin else None,
        drain_timeout=doc.drain_timeout,
    )


def _admin(listen: str) -> AdminConfig:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6), already checked by the document model."""
    host, _, port = listen.rpartition(":")
    return AdminConfig(host=host[1:-1] if host.startswith("[") and host.endswith("]") else host, port=int(port))


def _token_dir(state_url: str, base: Path) -> Path:
    """Where upstream OAuth tokens live: ``tokens/`` beside the sqlite state database (else in
    ``.mcp-guard/`` beside guard.yaml): machine-local, never in a shared store."""
    if state_url.startswith("sqlite:///"):
        return Path(state_url[len("sqlite:///"):]).parent / "tokens"
    return base / ".mcp-guard" / "tokens"


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name).lstrip(".") or "default"

