"""The users repository: API accounts, their bearer tokens (stored only as SHA-256 digests) and
failed-login counters per account and per source address.

Takes already-validated values and already-computed password hashes (siprec_server.access);
`now` is always a parameter. Users are never deleted, only disabled, so that audit events
keep pointing at a real account.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from storage.database import transaction

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection

__all__ = [
    "IssuedToken",
    "LastAdminError",
    "LoginFailure",
    "SourceFailures",
    "TokenOwner",
    "User",
    "UserError",
    "UsernameTakenError",
    "create_user",
    "find_user",
    "find_user_by_name",
    "has_users",
    "issue_token",
    "list_users",
    "record_login_failure",
    "record_login_success",
    "record_source_failure",
    "resolve_token",
    "revoke_token",
    "revoke_user_tokens",
    "source_blocked_until",
    "update_user",
]

_BOOTSTRAP_LOCK_KEY = 0x5EC0_B007


class UserError(Exception):
    """A change to the users table that cannot be made."""


class UsernameTakenError(UserError):
    """Another account already has this name (names compare case-insensitively)."""


class LastAdminError(UserError):
    """The change would leave no enabled administrator."""


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    username: str
    role: str
    password_hash: str = field(repr=False)
    scopes: tuple[str, ...]
    disabled: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime
    failed_logins: int
    locked_until: datetime | None
    last_login_at: datetime | None
    grants: tuple[str, ...] = ()
    """Permissions beyond the role's (siprec_server.access.GRANTABLE)."""


def _user(row: Any) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        role=row["role"],
        password_hash=row["password_hash"],
        scopes=tuple(row["scopes"]),
        disabled=row["disabled"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        password_changed_at=row["password_changed_at"],
        failed_logins=row["failed_logins"],
        locked_until=row["locked_until"],
        last_login_at=row["last_login_at"],
        grants=tuple(row["grants"]),
    )


_USER_COLUMNS = """id, username, role, password_hash, scopes, disabled, created_at, updated_at,
                   password_changed_at, failed_logins, locked_until, last_login_at, grants"""


async def create_user(
    db: Executor,
    *,
    username: str,
    role: str,
    password_hash: str,
    scopes: Sequence[str],
    now: datetime,
    only_if_none_exist: bool = False,
    grants: Sequence[str] = (),
) -> User | None:
    """Insert a new account. With `only_if_none_exist`, do so only while the table is empty
    (the bootstrap administrator; several nodes may start at once) and return None otherwise.
    UsernameTakenError when the name is in use."""
    async with transaction(db) as conn:
        if only_if_none_exist:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK_KEY)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
                return None
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO users (id, username, role, password_hash, scopes, created_at,
                                       updated_at, password_changed_at, grants)
                    VALUES ($1, $2, $3, $4, $5, $6, $6, $6, $7) RETURNING {_USER_COLUMNS}""",
                uuid.uuid4(), username, role, password_hash, list(scopes), now, list(grants),
            )
        except asyncpg.UniqueViolationError:
            raise UsernameTakenError(f"the username {username!r} is taken") from None
    return _user(row)


async def has_users(db: Executor) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM users)"))


async def find_user(db: Executor, user_id: UUID) -> User | None:
    row = await db.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return None if row is None else _user(row)


async def find_user_by_name(db: Executor, username: str) -> User | None:
    row = await db.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE lower(username) = lower($1)", username
    )
    return None if row is None else _user(row)


async def list_users(db: Executor) -> list[User]:
    rows = await db.fetch(f"SELECT {_USER_COLUMNS} FROM users ORDER BY lower(username)")
    return [_user(row) for row in rows]


_UNSET: Any = object()


async def update_user(
    db: Executor,
    user_id: UUID,
    *,
    now: datetime,
    role: str = _UNSET,
    scopes: Sequence[str] = _UNSET,
    disabled: bool = _UNSET,
    password_hash: str = _UNSET,
    unlock: bool = False,
    grants: Sequence[str] = _UNSET,
) -> tuple[User, User] | None:
    """Change the given fields; returns (before, after), or None for an unknown user.
    LastAdminError when the change would demote or disable the last enabled administrator."""
    async with transaction(db) as conn:
        # Row locks on every enabled admin serialise concurrent demotions of the last two.
        admins = {
            row["id"]
            for row in await conn.fetch(
                "SELECT id FROM users WHERE role = 'admin' AND NOT disabled FOR UPDATE"
            )
        }
        row = await conn.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id
        )
        if row is None:
            return None
        before = _user(row)
        leaves_admins = (role is not _UNSET and role != "admin") or (
            disabled is not _UNSET and disabled
        )
        if leaves_admins and admins == {user_id}:
            raise LastAdminError("this is the last enabled administrator")
        sets = ["updated_at = $2"]
        args: list[Any] = [user_id, now]

        def assign(column: str, value: Any) -> None:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")

        if role is not _UNSET:
            assign("role", role)
        if scopes is not _UNSET:
            assign("scopes", list(scopes))
        if disabled is not _UNSET:
            assign("disabled", disabled)
        if grants is not _UNSET:
            assign("grants", list(grants))
        if password_hash is not _UNSET:
            assign("password_hash", password_hash)
            sets.append("password_changed_at = $2")
        if unlock or password_hash is not _UNSET:
            sets.extend(["failed_logins = 0", "locked_until = NULL"])
        after = await conn.fetchrow(
            f"UPDATE users SET {', '.join(sets)} WHERE id = $1 RETURNING {_USER_COLUMNS}", *args
        )
    return before, _user(after)


# --- logins -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginFailure:
    failures: int
    """Consecutive failed logins of the account, this one included."""
    locked_until: datetime | None
    newly_locked: bool
    """This failure locked the account."""


async def record_login_failure(
    db: Executor, user_id: UUID, now: datetime, *, max_failures: int, lockout: timedelta
) -> LoginFailure:
    """Count a wrong password; the max_failures-th consecutive one locks the account for
    `lockout`. An expired lock starts the count afresh; a lock set meanwhile by a parallel
    attempt is kept as it is."""
    async with transaction(db) as conn:
        row = await conn.fetchrow(
            "SELECT failed_logins, locked_until FROM users WHERE id = $1 FOR UPDATE", user_id
        )
        if row is None:
            raise UserError("no such user")
        locked_until: datetime | None = row["locked_until"]
        if locked_until is not None and locked_until > now:
            return LoginFailure(row["failed_logins"], locked_until, newly_locked=False)
        failures = 1 if locked_until is not None else row["failed_logins"] + 1
        lock = now + lockout if failures >= max_failures else None
        await conn.execute(
            """UPDATE users SET failed_logins = $2, last_failed_at = $3, locked_until = $4
               WHERE id = $1""",
            user_id,
            failures,
            now,
            lock,
        )
    return LoginFailure(failures, lock, newly_locked=lock is not None)


async def record_login_success(
    db: Executor, user_id: UUID, now: datetime, new_password_hash: str | None = None
) -> bool:
    """Reset the failure count and note the login; store a re-computed hash when the hashing
    parameters were upgraded. False when the account was locked or disabled while its
    password was being checked (a parallel guess locked it): the login must then fail."""
    found = await db.fetchval(
        """UPDATE users SET failed_logins = 0, locked_until = NULL, last_login_at = $2,
               password_hash = COALESCE($3, password_hash)
           WHERE id = $1 AND NOT disabled AND (locked_until IS NULL OR locked_until <= $2)
           RETURNING id""",
        user_id,
        now,
        new_password_hash,
    )
    return found is not None


@dataclass(frozen=True, slots=True)
class SourceFailures:
    failures: int
    """Failures from this address in the current window, this one included."""
    blocked_until: datetime | None


async def source_blocked_until(db: Executor, source: str, now: datetime) -> datetime | None:
    value: datetime | None = await db.fetchval(
        "SELECT blocked_until FROM login_failures WHERE source = $1 AND blocked_until > $2",
        source,
        now,
    )
    return value


async def record_source_failure(
    db: Executor,
    source: str,
    now: datetime,
    *,
    window: timedelta,
    max_failures: int,
    block: timedelta,
) -> SourceFailures:
    """Count a failed login from `source` in a fixed window; block the address when the count
    reaches max_failures."""
    row = await db.fetchrow(
        """INSERT INTO login_failures AS f (source, failures, window_start, last_failed_at)
           VALUES ($1, 1, $2, $2)
           ON CONFLICT (source) DO UPDATE SET
               failures = CASE WHEN f.window_start <= $2 - $3::interval THEN 1
                               ELSE f.failures + 1 END,
               window_start = CASE WHEN f.window_start <= $2 - $3::interval THEN $2
                                   ELSE f.window_start END,
               last_failed_at = $2
           RETURNING failures, blocked_until""",
        source,
        now,
        window,
    )
    failures: int = row["failures"]
    blocked: datetime | None = row["blocked_until"]
    if failures >= max_failures and (blocked is None or blocked <= now):
        blocked = now + block
        # A new window starts after the block, so one failure then does not re-block.
        await db.execute(
            """UPDATE login_failures SET blocked_until = $2, failures = 0, window_start = $2
               WHERE source = $1""",
            source,
            blocked,
        )
    return SourceFailures(failures, blocked if blocked is not None and blocked > now else None)


# --- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token_hash: bytes
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """A live token's user, as of this request."""

    user: User
    token_hash: bytes
    expires_at: datetime


async def issue_token(
    db: Executor,
    user_id: UUID,
    token_hash: bytes,
    *,
    now: datetime,
    ttl: timedelta,
    source: str | None,
    kind: str = "api",
) -> IssuedToken:
    """A new token of `kind`: "api" (bearer) or "web" (a browser session's cookie)."""
    expires_at = now + ttl
    await db.execute(
        """INSERT INTO api_tokens (token_hash, user_id, created_at, expires_at, source, kind)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        token_hash,
        user_id,
        now,
        expires_at,
        source,
        kind,
    )
    return IssuedToken(token_hash, expires_at)


async def resolve_token(db: Executor, token_hash: bytes, now: datetime,
                        idle: timedelta | None = None, *, kind: str = "api"
                        ) -> TokenOwner | None:
    """The owner of a live token of `kind` (not expired, not revoked, not idle longer than
    `idle`, user not disabled), recording its use; None otherwise."""
    row = await db.fetchrow(
        f"""UPDATE api_tokens t SET last_used_at = $2
            FROM users u
            WHERE t.token_hash = $1 AND t.user_id = u.id AND t.revoked_at IS NULL
              AND t.expires_at > $2 AND NOT u.disabled
              AND ($3::interval IS NULL OR COALESCE(t.last_used_at, t.created_at) > $2 - $3)
              AND t.kind = $4
            RETURNING t.expires_at AS token_expires_at,
                      {', '.join('u.' + c.strip() for c in _USER_COLUMNS.split(','))}""",
        token_hash,
        now,
        idle,
        kind,
    )
    if row is None:
        return None
    return TokenOwner(_user(row), token_hash, row["token_expires_at"])


async def revoke_token(db: Executor, token_hash: bytes, now: datetime) -> bool:
    status: str = await db.execute(
        "UPDATE api_tokens SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
        token_hash,
        now,
    )
    return status.endswith(" 1")


async def revoke_user_tokens(db: Executor, user_id: UUID, now: datetime) -> int:
    """Revoke every live token of a user; returns how many."""
    status: str = await db.execute(
        """UPDATE api_tokens SET revoked_at = $2
           WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2""",
        user_id,
        now,
    )
    return int(status.rsplit(" ", 1)[1])


