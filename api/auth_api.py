"""Identity endpoints of the control API: login and logout (bearer tokens), user administration,
and the audit trail reader. Accounts are created by siprec_server.services.accounts, which the
command line shares.

    POST   /api/v1/auth/token      {"username","password"} -> {"token","expires_at",...}
    DELETE /api/v1/auth/token      revoke the caller's token
    GET    /api/v1/users           users.manage
    POST   /api/v1/users           users.manage: {"username","role","password"?,"scopes"?,
                                                  "grants"?: ["restricted"]}
    GET    /api/v1/users/me        any authenticated caller: their own account
    GET    /api/v1/users/{id}      users.manage
    PATCH  /api/v1/users/{id}      users.manage: {"role"?,"scopes"?,"disabled"?,"password"?,
                                                  "unlock"?}
    DELETE /api/v1/users/{id}      users.manage: disable and revoke its tokens (the row stays)
    GET    /api/v1/audit           audit.read: ?actor= &action= &target= &outcome= &from= &to=
                                   &limit= &cursor= &order=desc|asc

Every login, failed login, account change and audit read writes an audit event; passwords and
tokens never appear in events or logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar
from uuid import UUID

from aiohttp import web

from api.app import DB_KEY, ApiInputError, parse_timestamp, read_json_object
from api.security import TOKEN_HASH, TOKEN_IDLE_KEY, authenticate, principal_of, require
from api.views import audit_event_view, rfc3339, user_view
from siprec_server.access import (
    DEFAULT_PASSWORD_HASHING,
    MAX_PASSWORD_LENGTH,
    LoginPolicy,
    PasswordHashing,
    Permission,
    Principal,
    new_api_token,
    token_digest,
    validate_grants,
    validate_password,
    validate_role,
    validate_scopes,
)
from siprec_server.logs import get_logger
from siprec_server.services.accounts import AccountNotFound, change_account, create_account
from storage import users
from storage.audit import AuditEvent, AuditQuery, read_audit, record_audit

__all__ = [
    "IDENTITY_KEY",
    "Identity",
    "issue_login",
    "setup_identity",
    "verify_login",
]

log = get_logger("api.auth")
_T = TypeVar("_T")

MAX_AUDIT_PAGE = 500
DEFAULT_AUDIT_PAGE = 100
_HASHING_SLOTS = 2  # concurrent argon2 computations (each 64 MiB and a core for ~0.1 s)
_HASHING_QUEUE = 32
"""Logins that may wait for a hashing slot; beyond, 503 at once (a login flood must not queue
without bound, holding memory and connections, while real users time out behind it)."""


@dataclass
class Identity:
    """Per-application identity settings and the shared password-hashing slots."""

    token_ttl: timedelta
    policy: LoginPolicy
    hashing: PasswordHashing
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_HASHING_SLOTS))
    _dummy_hash: str | None = None
    waiting: int = 0
    refused: int = 0
    """Logins answered 503 because the hashing queue was full."""

    async def hash(self, password: str) -> str:
        return await self._run(self.hashing.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Checks against a throw-away hash when there is no account, so that an unknown name
        costs the same time as a wrong password."""
        if stored_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
            stored_hash = self._dummy_hash
        return await self._run(self.hashing.verify, stored_hash, password)

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        if self.waiting >= _HASHING_QUEUE:
            self.refused += 1
            raise ApiInputError("too many logins at once; try again in a moment", status=503,
                                code="busy", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            # argon2-cffi releases the GIL: threads give real parallelism and keep the loop free.
            async with self._slots:
                return await asyncio.get_running_loop().run_in_executor(None, function, *args)
        finally:
            self.waiting -= 1


IDENTITY_KEY = web.AppKey("identity", Identity)


def setup_identity(
    app: web.Application,
    *,
    token_ttl_s: int = 28800,
    idle_timeout_s: int | None = 900,
    policy: LoginPolicy | None = None,
    password_hashing: PasswordHashing = DEFAULT_PASSWORD_HASHING,
) -> None:
    """Add authentication (middleware) and the identity routes to an app from create_api()."""
    if token_ttl_s <= 0:
        raise ValueError("token_ttl_s must be positive")
    if IDENTITY_KEY in app:
        raise RuntimeError("setup_identity was already applied to this application")
    app[IDENTITY_KEY] = Identity(
        timedelta(seconds=token_ttl_s), policy or LoginPolicy(), password_hashing
    )
    if idle_timeout_s:
        app[TOKEN_IDLE_KEY] = timedelta(seconds=idle_timeout_s)
    app.middlewares.append(authenticate)
    router = app.router
    router.add_post("/api/v1/auth/token", login)
    router.add_delete("/api/v1/auth/token", logout)
    router.add_get("/api/v1/users", list_users)
    router.add_post("/api/v1/users", create_user)
    router.add_get("/api/v1/users/me", show_me)  # before {id}: routes match in order
    router.add_get("/api/v1/users/{id}", show_user)
    router.add_patch("/api/v1/users/{id}", update_user)
    router.add_delete("/api/v1/users/{id}", disable_user)
    router.add_get("/api/v1/audit", list_audit)


# --- request helpers --------------------------------------------------------------------------


def _user_id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise ApiInputError("no such user", status=404, code="not_found") from None


async def _audit(request: web.Request, event: AuditEvent) -> None:
    await record_audit(request.app[DB_KEY], event)


def _source(request: web.Request) -> str:
    return request.remote or "unknown"


# --- login and logout -------------------------------------------------------------------------


def _login_refused() -> ApiInputError:
    # One answer for unknown name, wrong password, locked and disabled accounts alike.
    return ApiInputError("wrong username or password", status=401, code="invalid_credentials",
                         headers={"WWW-Authenticate": 'Bearer realm="siprec-server"'})


async def login(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request, frozenset({"username", "password"}))
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiInputError("username and password are required (strings)")
    user, rehashed = await verify_login(request, username, password)
    token, issued = await issue_login(request, user, rehashed=rehashed)
    principal = Principal.of(user.id, user.username, user.role, user.scopes, user.grants)
    response = web.json_response({
        "token": token,
        "token_type": "Bearer",
        "expires_at": rfc3339(issued.expires_at),
        "user": {"id": str(user.id), "username": user.username, "role": user.role,
                 "permissions": sorted(principal.permissions), "scopes": list(user.scopes)},
    })
    response.headers["Cache-Control"] = "no-store"
    return response


async def verify_login(request: web.Request, username: str,
                       password: str) -> tuple[users.User, bool]:
    """The account these credentials open, and whether its hash was upgraded on the way; the
    API's login and the web interface's both come here, so throttling, lock-out, timing and
    the audit of failures are one. A refusal is audited, delayed and raised (ApiInputError:
    401, 429 for a blocked source, 503 when the hashing queue is full)."""
    if not username or not password or len(username) > 256 or len(password) > MAX_PASSWORD_LENGTH:
        raise ApiInputError("username and password must be non-empty and not overlong")
    identity = request.app[IDENTITY_KEY]
    policy = identity.policy
    db = request.app[DB_KEY]
    source = _source(request)
    now = datetime.now(UTC)

    blocked_until = await users.source_blocked_until(db, source, now)
    if blocked_until is not None:
        await _audit(request, AuditEvent(
            actor="anonymous", action="auth.login_failed", outcome="failure", source=source,
            details={"reason": "source_blocked"},
        ))
        retry = max(1, int((blocked_until - now).total_seconds()) + 1)
        raise ApiInputError("too many failed logins from this address; try again later",
                            status=429, code="too_many_attempts",
                            headers={"Retry-After": str(retry)})

    user = await users.find_user_by_name(db, username)
    # Always hash, whatever the outcome will be: the time taken must not tell them apart.
    password_ok = await identity.verify(user.password_hash if user else None, password)

    reason = "bad_password"
    if user is None:
        reason = "unknown_user"
    elif user.disabled:
        reason = "disabled"
    elif policy.is_locked(user.locked_until, now):
        reason = "locked"
    elif password_ok:
        new_hash = None
        if identity.hashing.needs_rehash(user.password_hash):
            new_hash = await identity.hash(password)
        # Checks the lock again: parallel guesses may have locked it while we were hashing.
        if await users.record_login_success(db, user.id, now, new_hash):
            return user, new_hash is not None
        reason = "locked"
    await _login_failed(request, policy, user, reason, source, now)


async def issue_login(request: web.Request, user: users.User, *, rehashed: bool = False,
                      kind: str = "api", via: str | None = None) -> tuple[str, users.IssuedToken]:
    """A new token for a user who just proved who they are, audited as auth.login: a bearer
    token ("api") or a browser session ("web"). `via` names how they proved it when it was
    not a password (e.g. "oidc")."""
    identity = request.app[IDENTITY_KEY]
    source = _source(request)
    now = datetime.now(UTC)
    token = new_api_token()
    issued = await users.issue_token(
        request.app[DB_KEY], user.id, token_digest(token), now=now, ttl=identity.token_ttl,
        source=source, kind=kind,
    )
    details: dict[str, Any] = {"token_id": issued.token_hash[:8].hex(),
                               "expires_at": rfc3339(issued.expires_at),
                               "rehashed": rehashed}
    if kind != "api":
        details["session"] = kind
    if via is not None:
        details["via"] = via
    await _audit(request, AuditEvent(
        actor=str(user.id), action="auth.login", target=str(user.id), source=source,
        details=details,
    ))
    return token, issued


async def _login_failed(
    request: web.Request,
    policy: LoginPolicy,
    user: users.User | None,
    reason: str,
    source: str,
    now: datetime,
) -> NoReturn:
    """Count and audit the failure, wait the policy's delay, and refuse."""
    db = request.app[DB_KEY]
    failure = None
    failures = 0
    if user is not None:
        failures = user.failed_logins
        if reason == "bad_password":
            failure = await users.record_login_failure(
                db, user.id, now, max_failures=policy.max_failures, lockout=policy.lockout
            )
            failures = failure.failures
    from_source = await users.record_source_failure(
        db, source, now, window=policy.source_window,
        max_failures=policy.source_max_failures, block=policy.source_block,
    )
    details: dict[str, Any] = {"reason": reason, "source_failures": from_source.failures}
    if user is not None:
        details["failures"] = failures
    actor = str(user.id) if user is not None else "anonymous"
    target = str(user.id) if user is not None else None
    await _audit(request, AuditEvent(
        actor=actor, action="auth.login_failed", outcome="failure", target=target,
        source=source, details=details,
    ))
    if failure is not None and failure.newly_locked and user is not None:
        log.warning("account_locked", user_id=str(user.id))
        await _audit(request, AuditEvent(
            actor="system", action="auth.account_locked", target=str(user.id), source=source,
            details={"until": rfc3339(failure.locked_until), "failures": failure.failures},
        ))
    if from_source.blocked_until is not None and from_source.failures >= policy.source_max_failures:
        log.warning("login_source_blocked")
        await _audit(request, AuditEvent(
            actor="system", action="auth.source_blocked", source=source,
            details={"until": rfc3339(from_source.blocked_until),
                     "failures": from_source.failures},
        ))
    await asyncio.sleep(policy.failure_delay(max(failures, from_source.failures)))
    raise _login_refused()


async def logout(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    digest = request[TOKEN_HASH]
    if await users.revoke_token(request.app[DB_KEY], digest, datetime.now(UTC)):
        await _audit(request, AuditEvent(
            actor=str(principal.user_id), action="auth.token_revoked",
            target=str(principal.user_id), source=_source(request),
            details={"reason": "logout", "token_id": digest[:8].hex(), "count": 1},
        ))
    return web.Response(status=204)


# --- users ------------------------------------------------------------------------------------


@require(Permission.USERS_MANAGE, action="users.list")
async def list_users(request: web.Request) -> web.StreamResponse:
    now = datetime.now(UTC)
    accounts = await users.list_users(request.app[DB_KEY])
    return web.json_response({"items": [user_view(u, now) for u in accounts],
                              "next_cursor": None})


@require(Permission.USERS_MANAGE, action="users.create")
async def create_user(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    body = await read_json_object(request, frozenset({"username", "role", "password", "scopes",
                                                      "grants"}))
    if "username" not in body or "role" not in body:
        raise ApiInputError("username and role are required")
    identity = request.app[IDENTITY_KEY]
    try:
        user, generated = await create_account(
            request.app[DB_KEY],
            actor=str(principal.user_id),
            username=body["username"],
            role=body["role"],
            scopes=body.get("scopes", []),
            grants=body.get("grants", []),
            password=body.get("password"),
            source=_source(request),
            hashing=identity.hashing,
        )
    except users.UsernameTakenError:
        raise ApiInputError("that username is taken", status=409, code="username_taken") from None
    assert user is not None
    result: dict[str, Any] = {"user": user_view(user, datetime.now(UTC))}
    if generated is not None:
        result["password"] = generated
    response = web.json_response(result, status=201)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Location"] = f"/api/v1/users/{user.id}"
    return response


async def show_me(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    user = await users.find_user(request.app[DB_KEY], principal.user_id)
    if user is None:
        raise ApiInputError("no such user", status=404, code="not_found")
    return web.json_response({"user": user_view(user, datetime.now(UTC))})


@require(Permission.USERS_MANAGE, action="users.read")
async def show_user(request: web.Request) -> web.StreamResponse:
    user = await users.find_user(request.app[DB_KEY], _user_id(request))
    if user is None:
        raise ApiInputError("no such user", status=404, code="not_found")
    return web.json_response({"user": user_view(user, datetime.now(UTC))})


_PATCHABLE = frozenset({"role", "scopes", "grants", "disabled", "password", "unlock"})


@require(Permission.USERS_MANAGE, action="users.update")
async def update_user(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    user_id = _user_id(request)
    body = await read_json_object(request, _PATCHABLE)
    if not body:
        raise ApiInputError(f"nothing to change; fields: {', '.join(sorted(_PATCHABLE))}")
    changes: dict[str, Any] = {}
    if "role" in body:
        changes["role"] = validate_role(body["role"]).value
    if "scopes" in body:
        changes["scopes"] = validate_scopes(body["scopes"])
    if "grants" in body:
        changes["grants"] = validate_grants(body["grants"])
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise ApiInputError("disabled must be true or false")
        changes["disabled"] = body["disabled"]
    if "unlock" in body and body["unlock"] is not True:
        raise ApiInputError("unlock can only be true")
    if "password" in body:
        target = await users.find_user(request.app[DB_KEY], user_id)
        clear = validate_password(body["password"],
                                  username=target.username if target else None)
        changes["password_hash"] = await request.app[IDENTITY_KEY].hash(clear)
    return await _change_user(
        request, principal, user_id, changes, unlock="unlock" in body, action="users.update"
    )


@require(Permission.USERS_MANAGE, action="users.disable")
async def disable_user(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    return await _change_user(
        request, principal, _user_id(request), {"disabled": True}, unlock=False,
        action="users.disable",
    )


async def _change_user(
    request: web.Request,
    principal: Principal,
    user_id: UUID,
    changes: Mapping[str, Any],
    *,
    unlock: bool,
    action: str,
) -> web.StreamResponse:
    try:
        after = await change_account(
            request.app[DB_KEY], actor=str(principal.user_id), user_id=user_id,
            changes=changes, unlock=unlock, action=action, source=_source(request))
    except users.LastAdminError:
        raise ApiInputError(
            "this would leave no enabled administrator", status=409, code="last_admin"
        ) from None
    except AccountNotFound:
        raise ApiInputError("no such user", status=404, code="not_found") from None
    return web.json_response({"user": user_view(after, datetime.now(UTC))})


# --- audit trail ------------------------------------------------------------------------------

_AUDIT_FILTERS = ("actor", "action", "target", "outcome")
_AUDIT_PARAMS = frozenset({*_AUDIT_FILTERS, "from", "to", "limit", "cursor", "order"})


def _audit_query(query: Mapping[str, str]) -> tuple[AuditQuery, dict[str, str]]:
    """The page the query string asks for, and the filters as given (for the audit event)."""
    unknown = sorted(set(query) - _AUDIT_PARAMS)
    if unknown:
        raise ApiInputError(f"unknown parameters: {', '.join(unknown)[:200]}")
    given: dict[str, str] = {}
    for name in set(query):
        values = query.getall(name) if hasattr(query, "getall") else [query[name]]
        if len(values) != 1:
            raise ApiInputError(f"{name}: give it once")
        if len(values[0]) > 256:
            raise ApiInputError(f"{name}: too long")
        given[name] = values[0]
    action, action_prefix = given.get("action"), None
    if action is not None and action.endswith("*"):
        action_prefix = action[:-1]  # "auth.*": every action under a prefix
        action = None
    at_from = parse_timestamp("from", given["from"]) if "from" in given else None
    at_to = parse_timestamp("to", given["to"]) if "to" in given else None
    order = given.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiInputError("order: asc or desc")
    after_seq = None
    if "cursor" in given:
        cursor = given["cursor"]
        if not cursor.isdigit() or len(cursor) > 18:
            raise ApiInputError("cursor: not a cursor of this listing")
        after_seq = int(cursor)
    limit_text = given.get("limit", str(DEFAULT_AUDIT_PAGE))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_AUDIT_PAGE:
        raise ApiInputError(f"limit: 1 to {MAX_AUDIT_PAGE}")
    page = AuditQuery(
        actor=given.get("actor"), action=action, action_prefix=action_prefix,
        target=given.get("target"), outcome=given.get("outcome"), at_from=at_from, at_to=at_to,
        after_seq=after_seq, newest_first=order == "desc", limit=int(limit_text),
    )
    return page, given


@require(Permission.AUDIT_READ, action="audit.read")
async def list_audit(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    query, given = _audit_query(request.query)
    if not principal.sees_restricted:
        query = dataclasses.replace(query, hide_restricted=True)
    page = await read_audit(request.app[DB_KEY], query)
    items = [audit_event_view(event) for event in page.events]
    next_cursor = str(page.events[-1].seq) if page.more else None
    # Reading the audit trail is itself audited (PCI DSS 10.2.1.3); after the query, so a
    # first page does not show its own read.
    await _audit(request, AuditEvent(
        actor=str(principal.user_id), action="audit.read", source=_source(request),
        details={"filters": given, "returned": len(items)},
    ))
    return web.json_response({"items": items, "next_cursor": next_cursor})
