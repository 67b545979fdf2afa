"""API accounts: creating one (the CLI's `users add`, `POST /api/v1/users`) and the bootstrap
administrator of a fresh database (start-up). Validation, hashing, the row and its audit event
happen together, whoever asks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from siprec_server.access import (
    DEFAULT_PASSWORD_HASHING,
    PasswordHashing,
    Role,
    generate_password,
    validate_password,
    validate_role,
    validate_scopes,
    validate_username,
)
from siprec_server.logs import get_logger
from storage import users
from storage.audit import AuditEvent, record_audit

__all__ = ["create_account", "ensure_bootstrap_admin"]

log = get_logger("accounts")


async def create_account(
    db: asyncpg.Pool,
    *,
    actor: str,
    username: object,
    role: object,
    scopes: object = (),
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
    generated = None
    if password is None:
        generated = password = generate_password()
    clear = validate_password(password)
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
