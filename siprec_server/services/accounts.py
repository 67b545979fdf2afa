"""API accounts: creating one (the CLI's `users add`, `POST /api/v1/users`), changing one (role,
scopes, password, unlock, disable: `users passwd|unlock|disable`, `PATCH|DELETE
/api/v1/users/{id}`) and the bootstrap administrator of a fresh database (start-up).
Validation, hashing, the row and its audit events happen together, whoever asks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from siprec_server.access import (
    DEFAULT_PASSWORD_HASHING,
    PasswordHashing,
    Role,
    generate_password,
    validate_grants,
    validate_password,
    validate_role,
    validate_scopes,
    validate_username,
)
from siprec_server.logs import get_logger
from storage import users
from storage.audit import AuditEvent, record_audit

__all__ = ["AccountNotFound", "change_account", "create_account", "ensure_bootstrap_admin"]

log = get_logger("accounts")


async def create_account(
    db: asyncpg.Pool,
    *,
    actor: str,
    username: object,
    role: object,
    scopes: object = (),
    grants: object = (),
    password: object = None,
    source: str | None = None,
    hashing: PasswordHashing = DEFAULT_PASSWORD_HASHING,
    only_if_none_exist: bool = False,
) -> tuple[users.User | None, str | None]:
    """Validate, hash and store a new account and audit it (users.create) in one transaction.
    Returns (user, generated password or None); user is None only when only_if_none_exist found
    accounts. AccessError for bad values, users.UsernameTakenError for a taken name."""
    name = validate_username(username)
    known_role = validate_role(role)
    patterns = validate_scopes(scopes)
    granted = validate_grants(grants)
    generated = None
    if password is None:
        generated = password = generate_password()
    clear = validate_password(password, username=name)
    password_hash = await asyncio.get_running_loop().run_in_executor(None, hashing.hash, clear)
    async with db.acquire() as conn, conn.transaction():
        user = await users.create_user(
            conn,
            username=name,
            role=known_role.value,
            password_hash=password_hash,
            scopes=patterns,
            now=datetime.now(UTC),
            only_if_none_exist=only_if_none_exist,
            grants=granted,
        )
        if user is None:
            return None, None
        await record_audit(
            conn,
            AuditEvent(
                actor=actor,
                action="users.create",
                target=str(user.id),
                source=source,
                details={
                    "username": user.username,
                    "role": user.role,
                    "scopes": list(user.scopes),
                    "grants": list(user.grants),
                    "password": "generated" if generated else "given",
                    "bootstrap": only_if_none_exist,
                },
            ),
        )
    return user, generated


async def ensure_bootstrap_admin(
    db: asyncpg.Pool,
    username: str,
    password: str | None,
    *,
    hashing: PasswordHashing = DEFAULT_PASSWORD_HASHING,
) -> str | None:
    """On a database without users, create the administrator `username` with `password`
    (from $SIPREC_BOOTSTRAP_PASSWORD) or a generated one. Returns the generated password (to be
    shown once, never logged), else None. AccessError for an unacceptable name or password."""
    if await users.has_users(db):
        return None
    user, generated = await create_account(
        db,
        actor="system",
        username=username,
        role=Role.ADMIN.value,
        password=password or None,
        source="bootstrap",
        hashing=hashing,
        only_if_none_exist=True,
    )
    if user is not None:
        log.warning("bootstrap_admin_created", user_id=str(user.id))
    return generated


class AccountNotFound(LookupError):
    """No account with that id or name."""


async def change_account(
    db: asyncpg.Pool,
    *,
    actor: str,
    user_id: UUID,
    changes: Mapping[str, Any],
    unlock: bool = False,
    action: str = "users.update",
    source: str | None = None,
) -> users.User:
    """Apply `changes` (role, scopes, disabled, password_hash) and/or unlock, audited in the
    same transaction; a reset password or a disabled account ends every token it had.
    AccountNotFound; users.LastAdminError when no enabled administrator would be left."""
    now = datetime.now(UTC)
    async with db.acquire() as conn, conn.transaction():
        result = await users.update_user(conn, user_id, now=now, unlock=unlock, **changes)
        if result is None:
            raise AccountNotFound("no such user")
        before, after = result
        await record_audit(conn, AuditEvent(
            actor=actor, action=action, target=str(user_id), source=source,
            details={"username": after.username,
                     "changes": _describe_changes(before, after, changes, unlock)},
        ))
        revoke_reason = (
            "password_reset" if "password_hash" in changes
            else "user_disabled" if after.disabled and not before.disabled
            else None
        )
        if revoke_reason is not None:
            count = await users.revoke_user_tokens(conn, user_id, now)
            await record_audit(conn, AuditEvent(
                actor=actor, action="auth.token_revoked", target=str(user_id), source=source,
                details={"reason": revoke_reason, "count": count},
            ))
    return after


async def account_by_name(db: asyncpg.Pool, username: str) -> users.User:
    user = await users.find_user_by_name(db, username)
    if user is None:
        raise AccountNotFound(f"no user {username!r}")
    return user


async def hash_password(password: object, *, username: str | None = None,
                        hashing: PasswordHashing = DEFAULT_PASSWORD_HASHING) -> str:
    """Validate a new password against the policy, then hash it (off the event loop)."""
    clear = validate_password(password, username=username)
    return await asyncio.get_running_loop().run_in_executor(None, hashing.hash, clear)


def _describe_changes(
    before: users.User, after: users.User, changes: Mapping[str, Any], unlock: bool
) -> dict[str, Any]:
    described: dict[str, Any] = {}
    if "role" in changes:
        described["role"] = {"from": before.role, "to": after.role}
    if "scopes" in changes:
        described["scopes"] = {"from": list(before.scopes), "to": list(after.scopes)}
    if "grants" in changes:
        described["grants"] = {"from": list(before.grants), "to": list(after.grants)}
    if "disabled" in changes:
        described["disabled"] = {"from": before.disabled, "to": after.disabled}
    if "password_hash" in changes:
        described["password"] = "reset"  # never the password or its hash
    if unlock:
        described["unlocked"] = True
    return described
