"""Browser sessions of the web interface: the cookie, CSRF, log-in and log-out, and the headers
every page gets.

A session is a token of kind "web" in the same table as API tokens (storage.users): the same
lifetime (`auth.token_ttl`), idle time-out (`auth.idle_timeout`), revocation and audit
(auth.login with "session": "web"). The log-in goes through the API's own `verify_login`, so
throttling, lock-out and the audit of failures are the API's. The cookie is HttpOnly,
SameSite=Strict, Path=/ui, Secure under TLS, and only ever sent to /ui; a web token is never
accepted as a bearer token, nor an API token as a cookie.

CSRF: every change (any method but GET/HEAD) needs the session's CSRF token, an HMAC of the
session token that pages carry (a hidden form field, or the X-CSRF-Token header from
scripts) and that another site can neither read nor compute; a request whose Origin or
Sec-Fetch-Site names another site is refused before that. The log-in form has its own
double-submit token (a cookie and a field) against log-in CSRF.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from aiohttp import web

from api.app import DB_KEY, ApiInputError, error
from api.keys_api import KEY_SERVICE
from api.security import PRINCIPAL, TOKEN_HASH, TOKEN_IDLE_KEY
from api.ui.words import in_words
from siprec_server.access import AccessError, Principal, token_digest
from siprec_server.logs import get_logger
from storage import users
from storage.search import SearchError

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "SESSION_TOKEN",
    "csrf_token",
    "login_csrf_ok",
    "new_login_csrf",
    "same_origin",
    "security_headers",
    "session_cookie",
    "web_sessions",
]

log = get_logger("api.ui")

COOKIE = "siprec_session"
LOGIN_COOKIE = "siprec_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_TOKEN = web.RequestKey("session_token", str)
"""request[SESSION_TOKEN]: the session's token, to derive its CSRF token (never logged)."""

PUBLIC_UI = ("/ui/login", "/ui/static/", "/ui/oidc/")
"""Paths under /ui that need no session."""
SEALED_PAGES = ("/ui/keys", "/ui/logout")
"""Pages a sealed server shows (scripts' calls are judged by the API's sealed gate)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; font-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: derived, so nothing more is stored."""
    digest = hmac.new(session_token.encode("ascii"), b"siprec-server ui csrf v1",
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another site (Origin, or the
    Fetch Metadata header); true when it says nothing (an old browser: the token decides)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null" and site == "same-origin":
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and parts.netloc == request.host


def _secure(request: web.Request) -> bool:
    return request.secure


def session_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(COOKIE, token, path="/ui", httponly=True, samesite="Strict",
                        secure=_secure(request))


def clear_session_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(COOKIE, path="/ui", secure=_secure(request), httponly=True,
                        samesite="Strict")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def login_csrf(request: web.Request, response: web.StreamResponse, value: str) -> None:
    """The log-in form's double-submit token: the same `value` in a cookie and a field."""
    response.set_cookie(LOGIN_COOKIE, value, path="/ui/login", httponly=True,
                        samesite="Strict", secure=_secure(request), max_age=3600)


def login_csrf_ok(request: web.Request, field: str | None) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE)
    return (bool(cookie) and bool(field) and same_origin(request)
            and hmac.compare_digest(str(cookie), str(field)))


async def _owner(request: web.Request) -> tuple[Principal, bytes, str] | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        digest = token_digest(token)
    except AccessError:
        return None
    idle: timedelta | None = request.app.get(TOKEN_IDLE_KEY)
    owner = await users.resolve_token(request.app[DB_KEY], digest, datetime.now(UTC), idle,
                                      kind="web")
    if owner is None:
        return None
    user = owner.user
    try:
        return Principal.of(user.id, user.username, user.role, user.scopes, user.grants), digest, token
    except AccessError:
        log.warning("unknown_role", user_id=str(user.id))
        return None


def _is_script_call(request: web.Request) -> bool:
    return request.path.startswith("/ui/api/")


async def _form_csrf(request: web.Request) -> str | None:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return None
    form = await request.post()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else None


@web.middleware
async def web_sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate /ui requests by the session cookie and check CSRF on every change; other
    paths pass through untouched (the API's bearer tokens are api.security's business)."""
    path = request.path
    if path != "/ui" and not path.startswith("/ui/"):
        return await handler(request)
    if path.startswith(PUBLIC_UI):
        return await handler(request)
    owner = await _owner(request)
    if owner is None:
        if _is_script_call(request):
            return error(401, "session_expired",
                         "your session has ended (logged out, or idle too long): log in again")
        raise web.HTTPSeeOther("/ui/login?expired=1" if request.cookies.get(COOKIE)
                               else "/ui/login")
    principal, digest, token = owner
    service = request.app.get(KEY_SERVICE)
    if service is not None and not service.ready and not _is_script_call(request) and \
            not path.startswith(SEALED_PAGES):
        # As the API answers 503 while sealed, so do the pages; custodians unseal on /ui/keys.
        raise web.HTTPSeeOther("/ui/keys?sealed=1")
    request[PRINCIPAL] = principal
    request[TOKEN_HASH] = digest
    request[SESSION_TOKEN] = token
    if request.method not in SAFE_METHODS:
        expected = csrf_token(token)
        given = request.headers.get(CSRF_HEADER) or await _form_csrf(request)
        if not same_origin(request) or not given or not hmac.compare_digest(given, expected):
            log.warning("csrf_refused", user_id=str(principal.user_id))
            return error(403, "csrf_failed", "this change did not come from a page of this "
                                             "server: reload the page and try again")
    if _is_script_call(request):
        return await _in_words(handler, request)
    return await handler(request)


async def _in_words(handler: Handler, request: web.Request) -> web.StreamResponse:
    """The API's answer to a page's script, its errors with a sentence for people added
    ("words"), so every script shows the same wording as the pages (api/ui/words.py)."""
    try:
        response = await handler(request)
    except ApiInputError as exc:
        response = error(exc.status, exc.code, str(exc))
        response.headers.update(exc.headers)
    except (AccessError, SearchError) as exc:
        response = error(400, "bad_request", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    if (response.status < 400 or not isinstance(response, web.Response) or response.prepared
            or response.content_type != "application/json" or response.body is None):
        return response
    try:
        body = json.loads(response.body if isinstance(response.body, bytes) else b"")
        problem = body["error"]
        problem["words"] = in_words(problem.get("code"), response.status,
                                    str(problem.get("message", "")))
    except (ValueError, KeyError, TypeError):
        return response
    answered = web.json_response(body, status=response.status)
    for name in ("Retry-After", "Content-Range", "WWW-Authenticate"):
        if name in response.headers:
            answered.headers[name] = response.headers[name]
    return answered


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every /ui response, streamed ones included, gets a strict CSP
    (no inline script or style), no framing, no sniffing and no referrer (search filters can
    be personal data and live in page URLs)."""
    if request.path != "/ui" and not request.path.startswith("/ui/") and request.path != "/":
        return
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if not request.path.startswith("/ui/static/"):
        headers.setdefault("Cache-Control", "no-store")
