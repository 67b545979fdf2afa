"""Least privilege in PostgreSQL: the server works through an application role that may read and
write its tables but can neither change nor delete an audit event; migrations and VACUUM (which
PostgreSQL 15 allows only to a table's owner) run as the owner role.

Embedded cluster: the server creates the role `siprec_app` itself (the cluster is its own).
External database (`[database] url`): the operator provides two roles, the owner in
`[database] migration_url` and the application role in `url` (README, "Database roles"); with
`url` alone everything runs as that one role, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

__all__ = ["APP_ROLE", "apply_app_grants", "dsn_as", "ensure_app_role", "vacuum"]

APP_ROLE = "siprec_app"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def dsn_as(dsn: str, user: str) -> str:
    """The same DSN (URL form) with another user and no password (peer/trust sockets)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}@{host}", parts.path, parts.query,
                       parts.fragment))


async def ensure_app_role(owner: asyncpg.Connection, role: str = APP_ROLE) -> None:
    """Create the application role if it is missing (needs CREATEROLE: the embedded cluster's
    superuser has it)."""
    exists = await owner.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        with contextlib.suppress(asyncpg.DuplicateObjectError):  # another starter made it
            await owner.execute(f"CREATE ROLE {_ident(role)} LOGIN")


async def apply_app_grants(owner: asyncpg.Connection, role: str) -> None:
    """What the application role may do, applied after every migration: every table read and
    written, the audit trail only read and appended to, the migrations table only read."""
    role_ident = _ident(role)
    async with owner.transaction():
        await owner.execute(f"GRANT USAGE ON SCHEMA public TO {role_ident}")
        await owner.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role_ident}")
        await owner.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public "
                            f"TO {role_ident}")
        await owner.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {role_ident}")
        await owner.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations "
                            f"FROM {role_ident}")


async def vacuum(db: asyncpg.Pool | str, tables: Sequence[str]) -> list[str]:
    """VACUUM the tables, as the owner when `db` is the owner's DSN; the tables that could not
    be vacuumed (PostgreSQL only warns when the role does not own them)."""
    skipped: list[str] = []
    conn = await asyncpg.connect(db) if isinstance(db, str) else await db.acquire()
    warnings: list[str] = []

    def listen(_conn: object, message: object) -> None:
        warnings.append(str(message))

    conn.add_log_listener(listen)
    try:
        for table in tables:
            warnings.clear()
            try:
                await conn.execute(f"VACUUM {_ident(table)}")
            except asyncpg.PostgresError:
                skipped.append(table)
                continue
            if any("skipping" in w for w in warnings):
                skipped.append(table)
    finally:
        conn.remove_log_listener(listen)
        if isinstance(db, str):
            await conn.close()
        else:
            await db.release(conn)
    return skipped
