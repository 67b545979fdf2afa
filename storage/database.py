"""The one way the server reaches PostgreSQL: connection pools, schema migrations, databases.

Migrations are plain SQL files named `NNNN_name.sql` in `storage/migrations/`, applied in
numeric order, each in its own transaction, and recorded with a checksum in `schema_migrations`
so an edited migration is refused instead of silently diverging from what production ran.
Several servers starting at once against one database are serialised by an advisory lock.
Migration files must not contain transaction control (BEGIN/COMMIT) or statements that cannot
run inside a transaction (CREATE INDEX CONCURRENTLY).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

__all__ = [
    "APPLICATION_NAME",
    "DEFAULT_MIGRATIONS_DIR",
    "DatabaseError",
    "Executor",
    "Migration",
    "MigrationError",
    "connection",
    "create_database",
    "create_pool",
    "drop_database",
    "dsn_with_database",
    "ensure_database",
    "migrate",
    "reachable",
    "read_migrations",
    "transaction",
]

log = logging.getLogger(__name__)

DEFAULT_MIGRATIONS_DIR = Path(__file__).parent / "migrations"
APPLICATION_NAME = "siprec-server"
# Any fixed 64-bit key; the lock is per database, so it only serialises migrators of one schema.
MIGRATION_LOCK_KEY = 0x5349505245434D47  # "SIPRECMG"
_CONNECT_TIMEOUT_S = 10.0
_MIGRATION_NAME = re.compile(r"(?P<version>\d+)_(?P<name>[^/]+)\.sql")
_MAX_IDENTIFIER_BYTES = 63

_SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int         PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class DatabaseError(Exception):
    """A database could not be prepared (bad name, unreachable server, ...)."""


class MigrationError(DatabaseError):
    """The migrations on disk cannot be applied consistently to this database."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    filename: str
    """e.g. `0001_initial.sql`; what schema_migrations.name records and migrate() returns."""
    checksum: str
    """SHA-256 of the file's bytes, hex."""
    sql: str


def read_migrations(migrations_dir: Path = DEFAULT_MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of a folder in version order; MigrationError on a misnamed file."""
    migrations: dict[int, Migration] = {}
    try:
        paths = sorted(migrations_dir.iterdir())
    except OSError as exc:
        raise MigrationError(f"cannot read migrations folder {migrations_dir}: {exc}") from exc
    for path in paths:
        if path.name.startswith(".") or path.suffix != ".sql":
            continue
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        version = int(match["version"])
        if not 0 < version < 2**31:
            raise MigrationError(f"migration file {path.name}: version out of range")
        if version in migrations:
            raise MigrationError(
                f"migration files {migrations[version].filename} and {path.name} "
                f"share version {version}"
            )
        raw = path.read_bytes()
        try:
            sql = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migration file {path.name} is not UTF-8: {exc}") from exc
        migrations[version] = Migration(version, path.name, hashlib.sha256(raw).hexdigest(), sql)
    return [migrations[v] for v in sorted(migrations)]


async def _set_codecs(conn: asyncpg.Connection) -> None:
    # Python dicts/lists in, Python dicts/lists out, instead of JSON text both ways.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout_s: float = 30.0,
) -> asyncpg.Pool:
    """A pool whose connections identify as siprec-server, time out runaway statements and
    map json/jsonb to Python objects."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=_CONNECT_TIMEOUT_S,
        init=_set_codecs,
        server_settings={
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(int(statement_timeout_s * 1000)),
        },
    )


async def reachable(db: asyncpg.Pool, *, timeout_s: float = 2.0) -> bool:
    """Whether the database answers a trivial query within `timeout_s` (health checks)."""
    try:
        await db.fetchval("SELECT 1", timeout=timeout_s)
    except Exception:  # noqa: BLE001 - any failure means the database is not usable
        return False
    return True


Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection
"""Where a repository function runs its statements: a pool, or a connection (a transaction)."""


@asynccontextmanager
async def connection(db: Executor) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the pool for the duration, or the given connection itself."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


@asynccontextmanager
async def transaction(db: Executor) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a pool's connection, or within the given connection (a savepoint when
    it is in a transaction already)."""
    async with connection(db) as conn, conn.transaction():
        yield conn


async def migrate(
    conn_or_pool: asyncpg.Connection | asyncpg.Pool,
    migrations_dir: Path = DEFAULT_MIGRATIONS_DIR,
) -> list[str]:
    """Apply the pending migrations of migrations_dir; return the file names applied now."""
    migrations = read_migrations(migrations_dir)
    async with connection(conn_or_pool) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(_SCHEMA_MIGRATIONS_DDL)
            applied = {
                row["version"]: (row["name"], row["checksum"])
                for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            }
        _check_against_applied(migrations, applied)

        applied_now: list[str] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
                # Another starter may have applied it while we waited for the lock.
                checksum = await conn.fetchval(
                    "SELECT checksum FROM schema_migrations WHERE version = $1",
                    migration.version,
                )
                if checksum is not None:
                    if checksum != migration.checksum:
                        raise _changed(migration)
                    continue
                # Migrations on a large table may rightly outlast the pool's statement timeout.
                await conn.execute("SET LOCAL statement_timeout = 0")
                try:
                    await conn.execute(migration.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"migration {migration.filename} failed and was rolled back: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.filename,
                    migration.checksum,
                )
            log.info("applied migration %s", migration.filename)
            applied_now.append(migration.filename)
    return applied_now


def _changed(migration: Migration) -> MigrationError:
    return MigrationError(
        f"migration {migration.filename} was changed after it was applied (checksum differs "
        f"from schema_migrations): restore the applied file and put changes in a new migration"
    )


def _check_against_applied(
    migrations: list[Migration], applied: dict[int, tuple[str, str]]
) -> None:
    on_disk = {m.version for m in migrations}
    for migration in migrations:
        if migration.version in applied and applied[migration.version][1] != migration.checksum:
            raise _changed(migration)
    newest_applied = max(applied, default=0)
    for migration in migrations:
        if migration.version not in applied and migration.version < newest_applied:
            raise MigrationError(
                f"migration {migration.filename} is older than the already applied "
                f"{applied[newest_applied][0]}: give it a number above {newest_applied}"
            )
    unknown = sorted(v for v in applied if v not in on_disk)
    if unknown:
        # A newer release migrated this database; older code may still run against it.
        log.warning(
            "database has migrations this code does not know: %s",
            ", ".join(applied[v][0] for v in unknown),
        )


def _quote_ident(name: str) -> str:
    if not name or "\x00" in name or len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise DatabaseError(f"invalid database name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def dsn_with_database(dsn: str, database: str) -> str:
    """The same DSN (URL form) pointing at another database on the same server."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("dbname", "database")]
    return urlunsplit(
        (
            parts.scheme,
            parts.netloc,
            "/" + quote(database, safe=""),
            urlencode(query, safe="/", quote_via=quote),
            parts.fragment,
        )
    )


async def _admin_connection(admin_dsn: str) -> Any:
    try:
        return await asyncpg.connect(admin_dsn, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc


async def _admin_execute(admin_dsn: str, statement: str, failure: str) -> None:
    """Run one statement on a connection of its own; DatabaseError("<failure>: ...")."""
    conn = await _admin_connection(admin_dsn)
    try:
        await conn.execute(statement)
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"{failure}: {exc}") from exc
    finally:
        await conn.close()


async def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database `name` unless it exists; return its DSN."""
    statement = f"CREATE DATABASE {_quote_ident(name)}"
    conn = await _admin_connection(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(statement)
    except asyncpg.DuplicateDatabaseError:
        pass  # created concurrently by another starter: fine
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"cannot create database {name!r}: {exc}") from exc
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, name)


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Create a new database (copied from `template` when given); return its DSN.

    Copying a migrated template is how tests get a fresh, fully migrated database quickly.
    """
    statement = f"CREATE DATABASE {_quote_ident(name)}"
    if template is not None:
        statement += f" TEMPLATE {_quote_ident(template)}"
    await _admin_execute(admin_dsn, statement, f"cannot create database {name!r}")
    return dsn_with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a database if it exists, ending any sessions still connected to it."""
    statement = f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)"
    await _admin_execute(admin_dsn, statement, f"cannot drop database {name!r}")
