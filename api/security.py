"""Authentication and authorisation at the HTTP edge.

`authenticate` (middleware) turns `Authorization: Bearer <token>` into `request[PRINCIPAL]`
for every route under /api/ except the public ones (login, the OpenAPI document); anything
else under /api/ without a live token gets 401 before routing reveals whether it exists.
`require(permission)` guards a handler (403 otherwise, audited as outcome "denied"), and
`principal_of(request)` is how handlers learn who is asking.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from api.app import DB_KEY, error
from siprec_server.access import AccessError, Permission, Principal, token_digest
from siprec_server.logs import get_logger
from storage import users
from storage.audit import AuditEvent, record_audit

__all__ = [
    "PRINCIPAL",
    "PUBLIC_API_ROUTES",
    "TOKEN_HASH",
    "audit_denied",
    "authenticate",
    "principal_of",
    "require",
]

log = get_logger("api.security")

PRINCIPAL = web.RequestKey("principal", Principal)
"""request[PRINCIPAL]: the Principal of an authenticated request (use principal_of)."""
TOKEN_HASH = web.RequestKey("token_hash", bytes)
"""request[TOKEN_HASH]: the SHA-256 digest of the bearer token used (to revoke it)."""
TOKEN_IDLE_KEY = web.AppKey("token_idle", timedelta)
"""app[TOKEN_IDLE_KEY]: a token unused this long is dead (PCI DSS 8.2.8: 15 minutes)."""

PUBLIC_API_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/api/v1/auth/token"),
        ("GET", "/api/v1/openapi.json"),
        ("HEAD", "/api/v1/openapi.json"),
        # Key custody: the seal state, and unseal, whose share is its own credential.
        ("GET", "/api/v1/keys/seal"),
        ("POST", "/api/v1/keys/unseal"),
    }
)
"""(method, route) pairs under /api/ that need no token."""

_REALM = 'Bearer realm="siprec-server"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unauthorized(code: str, message: str, header: str) -> web.Response:
    response = error(401, code, message)
    response.headers["WWW-Authenticate"] = header
    return response


def _route_path(request: web.Request) -> str:
    """The matched route's template ("/api/v1/users/{id}"); the raw path when nothing
    matched, so an unknown /api/ path is still refused before it 404s."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = _route_path(request)
    if not request.path.startswith("/api/") and not route.startswith("/api/"):
        return await handler(request)
    if (request.method, route) in PUBLIC_API_ROUTES:
        return await handler(request)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return _unauthorized("unauthenticated", "a bearer token is required", _REALM)
    now = datetime.now(UTC)
    owner = None
    try:
        digest = token_digest(credentials)
    except AccessError:
        digest = None
    if digest is not None:
        owner = await users.resolve_token(request.app[DB_KEY], digest, now,
                                          request.app.get(TOKEN_IDLE_KEY))
    if owner is None or digest is None:
        return _unauthorized(
            "invalid_token",
            "the token is invalid, expired (or idle too long) or revoked: log in again",
            f'{_REALM}, error="invalid_token"',
        )
    user = owner.user
    try:
        principal = Principal.of(user.id, user.username, user.role, user.scopes)
    except AccessError:
        # A role this code does not know (a newer release wrote it): grant nothing.
        log.warning("unknown_role", user_id=str(user.id))
        return error(403, "forbidden", "this account's role is not known to this server")
    request[PRINCIPAL] = principal
    request[TOKEN_HASH] = digest
    return await handler(request)


def principal_of(request: web.Request) -> Principal:
    """Who is asking; HTTPUnauthorized when the request was not authenticated (a route outside
    /api/, or a public one)."""
    principal = request.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": _REALM})
    return principal


def require(permission: str, *, action: str | None = None) -> Callable[[Handler], Handler]:
    """Let the handler run only for principals holding `permission`; others get 403 and an
    audit event (`action`, default the permission's name) with outcome "denied"."""
    known = Permission(permission)  # a typo must fail at import, not deny everyone at run time
    audited_action = action or known.value

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            principal = principal_of(request)
            if not principal.can(known):
                await audit_denied(request, principal, audited_action, known)
                return error(403, "forbidden", f"this needs the {known.value} permission")
            return await handler(request)

        return guarded

    return decorate


async def audit_denied(
    request: web.Request, principal: Principal, action: str, permission: str
) -> None:
    target = request.match_info.get("id") or request.match_info.get("ref")
    details: dict[str, Any] = {
        "permission": permission,
        "method": request.method,
        # The route template, not the path: a path can carry a searched-for number.
        "route": _route_path(request),
    }
    await record_audit(
        request.app[DB_KEY],
        AuditEvent(
            actor=str(principal.user_id),
            action=action,
            outcome="denied",
            target=target,
            source=request.remote,
            details=details,
        ),
    )
