"""The guard's approval page (``serve.approvals``): a channel the calling agent does not hold.

``GET /approvals/<id>`` first sends the person to the configured OAuth issuer (authorization code
+ PKCE, with the guard's own client), verifies the ID token it gets back (signature from the
issuer's JWKS, ``iss``, ``aud`` = the guard's client, ``nonce``), and keeps the sign-in in a sealed,
HttpOnly, SameSite=Strict cookie for ``session_ttl``.  The page then shows the request in full —
principal chain, upstream and tool, purpose, the complete arguments as JSON with bidi, control and
zero-width characters made visible — and answers it with a POST carrying a CSRF token bound to
that sign-in.  Only the chain's origin user (or the configured ``approvers``) may answer, never one
of the chain's agents.  An id that does not exist and one the person may not answer look the same
(404).  Requests live in the state store, so any replica serves any page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import jwt
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mcp_guard.config import ApprovalPageConfig, OAuthIssuerConfig
from mcp_guard.errors import StateError
from mcp_guard.invisible import code, invisible
from mcp_guard.proxy.approval_seal import StateSealer
from mcp_guard.serve.oauth import ALGORITHMS, FETCH_TIMEOUT, LEEWAY, OAuthError, _Issuer, discovery_urls
from mcp_guard.state import APPROVED, PENDING, REJECTED

if TYPE_CHECKING:
    from mcp_guard.state import StateStore

log = logging.getLogger("mcp_guard.approvals")

PREFIX = "/approvals"
LOGIN_COOKIE = "mcp_guard_login"
SESSION_COOKIE = "mcp_guard_approver"
LOGIN_TTL = 600.0  # seconds a started sign-in may take at the issuer
MAX_FORM = 16 * 1024  # bytes of an answer form
_ID = frozenset("0123456789abcdef")
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1c1e21}
main{max-width:960px;margin:2rem auto;background:#fff;border:1px solid #d0d4da;border-radius:8px;padding:1.5rem 2rem}
h1{font-size:1.3rem;margin:0 0 1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1rem;margin:0 0 1rem}
dt{font-weight:600;color:#555}dd{margin:0;overflow-wrap:anywhere}
pre{background:#f0f2f5;border:1px solid #d0d4da;border-radius:6px;padding:.8rem;white-space:pre-wrap;overflow-wrap:anywhere;font:13px/1.4 ui-monospace,monospace}
.esc{background:#ffe08a;color:#7a2e00;border-radius:3px;padding:0 2px;font-weight:600}
.status{font-weight:700}.pending{color:#8a5a00}.approved{color:#17692c}.rejected,.expired{color:#a11}
form{display:inline-block;margin-right:1rem}
input[type=text]{width:22rem;padding:.3rem}
button{font:inherit;padding:.45rem 1.2rem;border-radius:6px;border:1px solid #888;cursor:pointer}
button.approve{background:#17692c;color:#fff;border-color:#17692c}button.deny{background:#a11;color:#fff;border-color:#a11}
.who{color:#555;font-size:.9rem;margin-top:1.5rem}
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; img-src 'none'; script-src 'none'")
_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

# --------------------------------------------------------------------------- showing untrusted text


def visible(text: str) -> str:
    """HTML for untrusted ``text``: escaped, with every invisible or reordering character (see
    ``mcp_guard.invisible``) shown as a highlighted ``⟨U+XXXX⟩``, so a right-to-left override or a
    blank-rendering filler cannot change what the approver reads.  Newlines stay line breaks."""
    out: list[str] = []
    for ch in text:
        if ch != "\n" and invisible(ch):
            out.append(f'<span class="esc">{code(ch)}</span>')
        else:
            out.append(html.escape(ch))
    return "".join(out)


def pretty_json(value: Any) -> str:
    """The complete value as indented JSON (keys sorted, non-ASCII kept), never shortened."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return repr(value)


# --------------------------------------------------------------------------- the page


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ApprovalPage:
    """The ``/approvals`` routes of ``serve``; ``base`` is the guard's public origin (from
    ``serve.url``), else each request's own."""

    def __init__(self, config: ApprovalPageConfig, store: StateStore, key: bytes | None = None, base: str | None = None) -> None:
        self.config = config
        self.store = store
        self.base = base.rstrip("/") if base else None
        self._login = StateSealer(key, b"mcp-guard/approval-page-login/v1")
        self._session = StateSealer(key, b"mcp-guard/approval-page-session/v1")
        self._issuer = _Issuer(OAuthIssuerConfig(issuer=config.issuer, audience=config.client_id))
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        # told of each answer given here (the id, the request as it was pending): ``serve`` sends the
        # caller's session ``notifications/elicitation/complete``
        self.on_answered: Callable[[str, Mapping[str, Any]], None] | None = None

    def routes(self) -> list[Route]:
        return [
            Route(f"{PREFIX}/callback", self.callback, methods=["GET"]),
            Route(PREFIX + "/{approval_id}", self.page, methods=["GET"]),
            Route(PREFIX + "/{approval_id}", self.answer, methods=["POST"]),
        ]

    # -- helpers

    def _base(self, request: Request) -> str:
        return self.base or str(request.base_url).rstrip("/")

    def _secure(self, request: Request) -> bool:
        """Cookies are ``Secure`` unless the page is served over plain HTTP on loopback."""
        parts = urlsplit(self._base(request))
        return not (parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK)

    def _html(self, title: str, body: str, status: int = 200) -> HTMLResponse:
        doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · mcp-guard</title>'
               f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
               f"<body><main>{body}</main></body></html>")
        return HTMLResponse(doc, status_code=status, headers=_HEADERS)

    def _not_found(self, who: dict[str, Any] | None = None) -> HTMLResponse:
        signed = f'<p class="who">Signed in as {visible(self._label(who))}.</p>' if who else ""
        return self._html("Not found", "<h1>No such approval request</h1><p>It does not exist, or it is not yours to "
                          f"answer.</p>{signed}", 404)

    @staticmethod
    def _valid_id(approval_id: str) -> bool:
        return 8 <= len(approval_id) <= 64 and set(approval_id) <= _ID

    def signed_in(self, request: Request) -> dict[str, Any] | None:
        """The approver of this browser's sign-in cookie, while it lasts."""
        data = self._session.open(request.cookies.get(SESSION_COOKIE))
        if data is None or data.get("k") != "session" or data.get("iss") != self.config.issuer:
            return None
        exp = data.get("exp")
        if not isinstance(exp, int | float) or time.time() >= exp:
            return None
        return data

    @staticmethod
    def _label(who: dict[str, Any] | None) -> str:
        if not who:
            return "?"
        extra = " ".join(x for x in (str(who.get("name") or ""), f"<{who['email']}>" if who.get("email") else "") if x)
        return f"{who.get('user')}{' (' + extra + ')' if extra else ''}"

    @staticmethod
    def approver(who: dict[str, Any]) -> str:
        """The approver as the audit log and the span record it: IdP issuer and subject, plus name
        and email when the ID token has them."""
        extra = ", ".join(x for x in (str(who.get("name") or ""), str(who.get("email") or "")) if x)
        return f"{who.get('user')} (sub {who.get('sub')} at {who.get('iss')}{', ' + extra if extra else ''}; approval page)"

    def may_answer(self, who: dict[str, Any], record: dict[str, Any]) -> bool:
        """The origin user (or a configured approver) — never an agent of the chain it would approve."""
        names = {str(who.get("user")), str(who.get("sub"))}
        agents = {str(a) for a in record.get("agents") or []} | {str(record.get("agent"))}
        if names & agents:
            return False
        allowed = set(self.config.approvers) if self.config.approvers else {str(record.get("user"))}
        return str(who.get("user")) in allowed

    # -- sign-in

    async def _meta(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() - self._metadata_at < 3600:
            return self._metadata
        problems: list[str] = []
        for url in discovery_urls(self.config.issuer):
            try:
                meta = await self._issuer._get_json(url)
            except OAuthError as exc:  # try the next discovery document
                problems.append(f"{url}: {exc}")
                continue
            if meta.get("issuer") == self.config.issuer and meta.get("authorization_endpoint") and meta.get("token_endpoint"):
                self._metadata, self._metadata_at = meta, time.monotonic()
                return meta
            problems.append(f"{url} is not this issuer's authorization server metadata")
        raise OAuthError(401, "invalid_request", f"cannot discover {self.config.issuer}: {'; '.join(problems)}")

    async def _start_login(self, request: Request, approval_id: str) -> Response:
        try:
            meta = await self._meta()
        except OAuthError as exc:
            log.warning("approval page: %s", exc)
            return self._html("Sign-in unavailable", "<h1>Sign-in is unavailable</h1><p>The identity provider cannot be "
                              "reached. Try again shortly.</p>", 503)
        verifier = _b64(secrets.token_bytes(32))
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        sealed = self._login.seal({"v": 1, "k": "login", "state": state, "nonce": nonce, "verifier": verifier,
                                   "id": approval_id, "exp": time.time() + LOGIN_TTL})
        query = urlencode({
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": f"{self._base(request)}{PREFIX}/callback",
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
            "prompt": "login",
        })
        response = RedirectResponse(f"{meta['authorization_endpoint']}?{query}", status_code=303, headers=_HEADERS)
        # Lax, not Strict: it must come back with the issuer's top-level redirect to the callback
        response.set_cookie(LOGIN_COOKIE, sealed, max_age=int(LOGIN_TTL), path=PREFIX, httponly=True,
                            secure=self._secure(request), samesite="lax")
        return response

    async def callback(self, request: Request) -> Response:
        login = self._login.open(request.cookies.get(LOGIN_COOKIE))
        params = request.query_params
        fail = self._html("Sign-in failed", "<h1>Sign-in failed</h1><p>Open the approval link again to start over.</p>", 400)
        fail.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        if login is None or login.get("k") != "login" or time.time() >= float(login.get("exp", 0)):
            return fail
        if not _same(params.get("state", ""), login.get("state")):
            return fail
        if "iss" in params and params["iss"] != self.config.issuer:  # RFC 9207
            return fail
        code = params.get("code")
        if not code:
            return fail
        try:
            claims = await self._redeem(request, code, str(login["verifier"]), str(login["nonce"]))
        except OAuthError as exc:
            log.warning("approval page sign-in refused: %s", exc)
            return fail
        user = claims.get(self.config.user)
        if not isinstance(user, str) or not user:
            log.warning("approval page sign-in refused: the ID token has no `%s` claim", self.config.user)
            return fail
        who = {"v": 1, "k": "session", "iss": self.config.issuer, "sub": claims["sub"], "user": user,
               "name": claims.get("name") if isinstance(claims.get("name"), str) else None,
               "email": claims.get("email") if isinstance(claims.get("email"), str) else None,
               "csrf": secrets.token_urlsafe(32), "exp": time.time() + self.config.session_ttl}
        target = f"{PREFIX}/{login['id']}"
        # a page of our own (not a redirect) leads on, so the SameSite=Strict cookie is sent with it
        response = self._html("Signed in", f'<h1>Signed in</h1><p><meta http-equiv="refresh" content="0;url={html.escape(target)}">'
                              f'<a href="{html.escape(target)}">Continue to the approval request</a></p>')
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        response.set_cookie(SESSION_COOKIE, self._session.seal(who), max_age=int(self.config.session_ttl), path=PREFIX,
                            httponly=True, secure=self._secure(request), samesite="strict")
        log.info("approval page: %s signed in", self.approver(who))
        return response

    async def _redeem(self, request: Request, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        """Trade the code for tokens at the issuer and return the verified ID token's claims."""
        import httpx2

        meta = await self._meta()
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                "redirect_uri": f"{self._base(request)}{PREFIX}/callback"}
        headers = {"Accept": "application/json"}
        if self.config.client_secret:  # client_secret_basic (RFC 6749 2.3.1: both parts form-encoded)
            pair = f"{quote(self.config.client_id, safe='')}:{quote(self.config.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.config.client_id
        try:
            async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as http:
                res = await http.post(str(meta["token_endpoint"]), data=form, headers=headers)
            body = res.json()
        except (httpx2.HTTPError, httpx2.InvalidURL, ValueError) as exc:  # network or not JSON
            raise OAuthError(401, "invalid_grant", f"the token endpoint failed: {exc}") from None
        if res.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            raise OAuthError(401, "invalid_grant", f"the token endpoint answered HTTP {res.status_code} without an ID token")
        token = body["id_token"]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OAuthError(401, "invalid_token", "the ID token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OAuthError(401, "invalid_token", f"the ID token is signed with {alg!r}")
        kid = header.get("kid")
        key = await self._issuer.key(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(token, key=key.jwk.key, algorithms=[alg], audience=self.config.client_id,
                                                issuer=self.config.issuer, leeway=LEEWAY,
                                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise OAuthError(401, "invalid_token", f"the ID token is invalid: {exc}") from None
        if not _same(claims.get("nonce", ""), nonce):
            raise OAuthError(401, "invalid_token", "the ID token's nonce does not match this sign-in")
        return claims

    # -- the request

    async def page(self, request: Request) -> Response:
        approval_id = str(request.path_params["approval_id"]).lower()
        who = self.signed_in(request)
        if not self._valid_id(approval_id):
            return self._not_found(who)
        if who is None:
            return await self._start_login(request, approval_id)  # same answer whether or not the id exists
        record = await self._record(approval_id)
        if record is None or not self.may_answer(who, record):
            return self._not_found(who)
        return self._html(f"Approval {approval_id}", self._render(record, who))

    async def answer(self, request: Request) -> Response:
        approval_id = str(request.path_params["approval_id"]).lower()
        who = self.signed_in(request)
        if who is None or not self._valid_id(approval_id):
            return self._html("Not signed in", "<h1>Not signed in</h1><p>Open the approval link again to sign in.</p>", 403)
        origin = request.headers.get("origin")
        if origin is not None and origin.rstrip("/") != self._origin(request):
            return self._html("Refused", "<h1>Refused</h1><p>This form was sent from another site.</p>", 403)
        body = b""
        async for chunk in request.stream():  # a form is small: never buffer more than MAX_FORM
            body += chunk
            if len(body) > MAX_FORM:
                return self._html("Refused", "<h1>Refused</h1><p>The form is too large.</p>", 413)
        from urllib.parse import parse_qs

        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items() if len(v) == 1}
        record = await self._record(approval_id)
        if record is None or not self.may_answer(who, record):
            log.warning("approval page: %s may not answer %s", self.approver(who), approval_id)
            return self._not_found(who)
        if not _same(form.get("csrf", ""), who.get("csrf")):
            log.warning("approval page: refused an answer to %s without a valid CSRF token (%s)", approval_id, self.approver(who))
            return self._html("Refused", "<h1>Refused</h1><p>The form has expired. Reload the page and answer again.</p>", 403)
        decision = form.get("decision")
        if decision not in ("approve", "deny"):
            return self._html("Refused", "<h1>Refused</h1><p>Choose approve or deny.</p>", 400)
        reason = " ".join(form.get("reason", "").split())[:500] or None
        try:
            done = await self.store.approval_resolve(approval_id, decision == "approve", self.approver(who), reason)
        except StateError as exc:
            log.error("approval page: cannot answer %s: %s", approval_id, exc)
            return self._html("Unavailable", "<h1>The approval could not be recorded</h1><p>Try again shortly.</p>", 503)
        if done:
            log.warning("approval %s %s by %s", approval_id, "approved" if decision == "approve" else "rejected", self.approver(who))
            if self.on_answered is not None:
                self.on_answered(approval_id, record)
        return RedirectResponse(f"{PREFIX}/{approval_id}", status_code=303, headers=_HEADERS)

    def _origin(self, request: Request) -> str:
        parts = urlsplit(self._base(request))
        return f"{parts.scheme}://{parts.netloc}"

    async def _record(self, approval_id: str) -> dict[str, Any] | None:
        try:
            return await self.store.approval_get(approval_id)
        except StateError as exc:
            log.error("approval page: the state store failed: %s", exc)
            return None

    def _render(self, record: dict[str, Any], who: dict[str, Any]) -> str:
        status = str(record.get("status"))
        chain = [str(x) for x in record.get("principal") or []]
        rows = [
            ("Tool", str(record.get("qualified") or record.get("tool"))),
            ("Upstream", f"{record.get('upstream')}"),
            ("Principal chain", " \u203a ".join(chain)),
            ("Origin user", str(record.get("user"))),
            ("Acting agent", f"{record.get('agent')} ({'verified' if record.get('verified') else 'self-asserted'})"),
            ("Purpose", str(record.get("purpose") or "(none given)")),
            ("Why", "policy " + ", ".join(record.get("policy_ids") or []) if record.get("policy_ids")
             else "the grant chain requires a human for this tool"),
            ("Arguments SHA-256", str(record.get("args_sha256"))),
            ("Requested", _when(record.get("created"))),
            ("Expires", _when(record.get("expires_at"))),
        ]
        dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{visible(v)}</dd>" for k, v in rows)
        if "args" in record:
            args = f"<pre>{visible(pretty_json(record.get('args')))}</pre>"
        else:
            args = f"<pre>{visible(str(record.get('args_preview', '')))}</pre><p>(only this preview was stored)</p>"
        shown = {PENDING: "waiting for an answer", APPROVED: "approved", REJECTED: "rejected"}.get(status, "expired")
        state = f'<p>Status: <span class="status {html.escape(status)}">{shown}</span>'
        if record.get("approver"):
            state += f" by {visible(str(record['approver']))}"
        if record.get("reason"):
            state += f" ({visible(str(record['reason']))})"
        state += "</p>"
        forms = ""
        if status == PENDING:
            csrf = html.escape(str(who.get("csrf")))
            action = html.escape(f"{PREFIX}/{record.get('id')}")
            forms = (
                f'<form method="post" action="{action}"><input type="hidden" name="csrf" value="{csrf}">'
                '<input type="hidden" name="decision" value="approve"><button class="approve" type="submit">Approve once</button></form>'
                f'<form method="post" action="{action}"><input type="hidden" name="csrf" value="{csrf}">'
                '<input type="hidden" name="decision" value="deny"><input type="text" name="reason" maxlength="500" '
                'placeholder="reason (optional)"> <button class="deny" type="submit">Deny</button></form>'
                "<p>Approving lets exactly this call, with exactly these arguments, through once.</p>"
            )
        return (f"<h1>mcp-guard asks you to approve a tool call</h1>{state}<dl>{dl}</dl><h2>Arguments</h2>{args}{forms}"
                f'<p class="who">Signed in as {visible(self._label(who))} at {visible(str(who.get("iss")))}.</p>')


def _same(given: Any, expected: Any) -> bool:
    """Constant-time comparison of two secrets, as bytes (any text, no exception on non-ASCII)."""
    return isinstance(expected, str) and bool(expected) and hmac.compare_digest(str(given).encode(), expected.encode())


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(epoch)))


def page_key(state_key: str | None) -> bytes | None:
    """The cookie-sealing key: derived from ``approvals.state_key`` so every replica opens every
    other's cookies; None (a random key per process) without it."""
    if not state_key:
        return None
    return hashlib.sha256(b"mcp-guard/approval-page-key/v1\x00" + state_key.encode()).digest()


def page_base(url: str | None, host: str, port: int) -> str:
    """The guard's public origin for approval links: ``serve.url``'s, else the listen address."""
    if url:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "localhost") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


__all__ = ["CSP", "ApprovalPage", "page_base", "page_key", "pretty_json", "visible"]
