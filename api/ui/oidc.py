"""Single sign-on through OpenID Connect (authorization code flow with PKCE), optional: `[ui.oidc]
issuer` names the identity provider.

The provider only says who someone is. What they may do stays the server's: the ID token's
`username_claim` (default preferred_username) must name an existing, enabled, unlocked local
account, whose role and scopes apply; nobody is created on the fly. A successful SSO log-in is a
web session like a password log-in (auth.login, "via": "oidc"); a refused one is audited as
auth.login_failed with the reason.

The flow's secrets (state, nonce, PKCE verifier) live in a short-lived HttpOnly cookie of this
path only, SameSite=Lax so that the provider's redirect back (a cross-site navigation) carries
it; the state must come back unchanged, the nonce must be in the ID token, and the verifier is
what the token endpoint checks the code against. The ID token's signature (the provider's JWKS,
RS/ES/PS algorithms only), issuer, audience, expiry and nonce are verified with PyJWT.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import jwt
from aiohttp import web

from api.app import DB_KEY
from api.auth_api import IDENTITY_KEY, issue_login
from api.ui.session import session_cookie
from siprec_server.logs import get_logger
from storage import users
from storage.audit import AuditEvent, record_audit

__all__ = ["OIDC_KEY", "OidcError", "OidcSettings", "add_oidc", "check_issuer"]

log = get_logger("api.ui.oidc")

FLOW_COOKIE = "siprec_oidc"
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]
DISCOVERY_TTL_S = 3600
HTTP_TIMEOUT_S = 10


class OidcError(Exception):
    """The provider's answer cannot be trusted or used; the message names why (no secrets)."""


def check_issuer(issuer: str) -> None:
    """An issuer is an https URL; plain http only on loopback (a provider on this machine)."""
    parts = urlsplit(issuer)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError("the issuer must be an https URL (http only on loopback)")
    if not parts.hostname or parts.query or parts.fragment:
        raise ValueError("the issuer must be a plain URL without query or fragment")


@dataclass
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str
    """This server's /ui/oidc/callback as the provider knows it (registered with it)."""
    username_claim: str = "preferred_username"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    display_name: str = "single sign-on"
    _discovery: dict[str, Any] | None = field(default=None, repr=False)
    _fetched_at: float = 0.0

    async def discovery(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        if self._discovery is None or time.monotonic() - self._fetched_at > DISCOVERY_TTL_S:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await _get_json(http, url)
            if document.get("issuer") != self.issuer:
                raise OidcError("the provider's discovery document names another issuer")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(document.get(name), str):
                    raise OidcError(f"the provider's discovery document has no {name}")
            self._discovery, self._fetched_at = document, time.monotonic()
        return self._discovery


OIDC_KEY = web.AppKey("oidc", OidcSettings)


async def _get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as response:
        if response.status != 200:
            raise OidcError(f"the provider answered {response.status} to {urlsplit(url).path}")
        body = await response.json(content_type=None)
    if not isinstance(body, dict):
        raise OidcError("the provider did not answer with a JSON object")
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))


async def start(request: web.Request) -> web.StreamResponse:
    settings = request.app[OIDC_KEY]
    try:
        async with _client() as http:
            endpoint = (await settings.discovery(http))["authorization_endpoint"]
    except (OidcError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.error("oidc_discovery_failed", error=str(exc)[:200])
        return _back_to_login()
    state, nonce, verifier = (secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                              secrets.token_urlsafe(48))
    query = urlencode({
        "response_type": "code",
        "client_id": settings.client_id,
        "redirect_uri": settings.redirect_uri,
        "scope": " ".join(settings.scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": _b64(hashlib.sha256(verifier.encode("ascii")).digest()),
        "code_challenge_method": "S256",
    })
    separator = "&" if "?" in endpoint else "?"
    response = web.Response(status=302, headers={"Location": f"{endpoint}{separator}{query}"})
    response.set_cookie(FLOW_COOKIE, f"{state}.{nonce}.{verifier}", path="/ui/oidc",
                        httponly=True, samesite="Lax", secure=request.secure, max_age=600)
    return response


def _back_to_login() -> web.Response:
    response = web.Response(status=303, headers={"Location": "/ui/login?sso_failed=1"})
    response.del_cookie(FLOW_COOKIE, path="/ui/oidc")
    return response


async def _refuse(request: web.Request, reason: str, user: users.User | None = None) -> web.Response:
    await record_audit(request.app[DB_KEY], AuditEvent(
        actor=str(user.id) if user else "anonymous", action="auth.login_failed",
        outcome="failure", target=str(user.id) if user else None,
        source=request.remote or "unknown", details={"via": "oidc", "reason": reason}))
    log.warning("oidc_login_refused", reason=reason)
    return _back_to_login()


async def _id_token_claims(settings: OidcSettings, code: str, verifier: str) -> dict[str, Any]:
    async with _client() as http:
        discovery = await settings.discovery(http)
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": settings.redirect_uri, "code_verifier": verifier,
                "client_id": settings.client_id}
        headers = {"Authorization": aiohttp.encode_basic_auth(
            settings.client_id, settings.client_secret)} if settings.client_secret else {}
        async with http.post(discovery["token_endpoint"], data=form,
                             headers=headers) as response:
            if response.status != 200:
                raise OidcError(f"the token endpoint answered {response.status}")
            tokens = await response.json(content_type=None)
        id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
        if not isinstance(id_token, str):
            raise OidcError("the token endpoint gave no ID token")
        jwks = await _get_json(http, discovery["jwks_uri"])
    try:
        header = jwt.get_unverified_header(id_token)
        candidates = [k for k in jwks.get("keys", []) if isinstance(k, dict)
                      and (header.get("kid") is None or k.get("kid") == header.get("kid"))]
        if not candidates:
            raise OidcError("no key of the provider matches the ID token")
        key = jwt.PyJWK(candidates[0])
        claims: dict[str, Any] = jwt.decode(
            id_token, key=key, algorithms=ALGORITHMS, audience=settings.client_id,
            issuer=settings.issuer, options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            leeway=60)
    except jwt.PyJWTError as exc:
        raise OidcError(f"the ID token does not verify ({type(exc).__name__})") from None
    return claims


async def callback(request: web.Request) -> web.StreamResponse:
    settings = request.app[OIDC_KEY]
    flow = request.cookies.get(FLOW_COOKIE, "").split(".")
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if len(flow) != 3 or not state or not hmac.compare_digest(flow[0], state):
        return await _refuse(request, "state_mismatch")
    if not code or "error" in request.query:
        return await _refuse(request, "provider_refused")
    try:
        claims = await _id_token_claims(settings, code, flow[2])
    except (OidcError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.error("oidc_token_failed", error=str(exc)[:200])
        return await _refuse(request, "token_invalid")
    if not hmac.compare_digest(str(claims.get("nonce", "")), flow[1]):
        return await _refuse(request, "nonce_mismatch")
    username = claims.get(settings.username_claim)
    if not isinstance(username, str) or not username:
        return await _refuse(request, "no_username_claim")
    db = request.app[DB_KEY]
    user = await users.find_user_by_name(db, username)
    now = datetime.now(UTC)
    if user is None:
        return await _refuse(request, "unknown_user")
    if user.disabled:
        return await _refuse(request, "disabled", user)
    if request.app[IDENTITY_KEY].policy.is_locked(user.locked_until, now) or \
            not await users.record_login_success(db, user.id, now, None):
        return await _refuse(request, "locked", user)
    token, _ = await issue_login(request, user, kind="web", via="oidc")
    # A page of ours moves on, not a redirect: the provider's redirect here was a cross-site
    # navigation, and a SameSite=Strict cookie is not sent along a redirect chain that began
    # on another site. The refresh is this page's own (same-site) navigation.
    response = web.Response(text=_CONTINUE, content_type="text/html", charset="utf-8")
    response.del_cookie(FLOW_COOKIE, path="/ui/oidc")
    session_cookie(response, request, token)
    return response


_CONTINUE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=/ui/">
<title>Signed in · siprec-server</title></head>
<body><p>Signed in. <a href="/ui/">Continue</a></p></body></html>
"""


def add_oidc(app: web.Application, settings: OidcSettings) -> None:
    check_issuer(settings.issuer)
    app[OIDC_KEY] = settings
    app.router.add_get("/ui/oidc/start", start)
    app.router.add_get("/ui/oidc/callback", callback)
