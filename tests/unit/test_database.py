"""storage.database against a real PostgreSQL (the session's embedded cluster)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from storage.database import (
    APPLICATION_NAME,
    DatabaseError,
    MigrationError,
    create_database,
    create_pool,
    drop_database,
    dsn_with_database,
    ensure_database,
    migrate,
    reachable,
    read_migrations,
)
from storage.embedded_postgres import EmbeddedPostgres


@pytest.fixture
async def empty_dsn(pg_cluster: EmbeddedPostgres) -> AsyncIterator[str]:
    """A database with no schema at all, for migrations written by the test."""
    name = f"empty_{uuid.uuid4().hex[:20]}"
    dsn = await create_database(pg_cluster.dsn, name)
    try:
        yield dsn
    finally:
        await drop_database(pg_cluster.dsn, name)


@pytest.fixture
async def conn(empty_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_dsn)
    try:
        yield connection
    finally:
        await connection.close()


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


async def test_migrations_apply_in_numeric_order_and_are_recorded(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "0010_third.sql": "INSERT INTO steps (step) VALUES ('third');",
            "0002_second.sql": "INSERT INTO steps (step) VALUES ('second');",
            "0001_first.sql": "CREATE TABLE steps (n serial, step text);",
            "README.md": "not a migration",
        },
    )
    applied = await migrate(conn, folder)
    assert applied == ["0001_first.sql", "0002_second.sql", "0010_third.sql"]
    assert [r["step"] for r in await conn.fetch("SELECT step FROM steps ORDER BY n")] == [
        "second",
        "third",
    ]
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
    assert [(r["version"], r["name"]) for r in rows] == [
        (1, "0001_first.sql"),
        (2, "0002_second.sql"),
        (10, "0010_third.sql"),
    ]
    assert [r["checksum"] for r in rows] == [m.checksum for m in read_migrations(folder)]


async def test_second_migrate_applies_nothing_and_new_files_only_once(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"0001_t.sql": "CREATE TABLE t (x int);"})
    assert await migrate(conn, folder) == ["0001_t.sql"]
    assert await migrate(conn, folder) == []
    write(folder, {"0002_u.sql": "INSERT INTO t VALUES (1);"})
    assert await migrate(conn, folder) == ["0002_u.sql"]
    assert await migrate(conn, folder) == []
    assert await conn.fetchval("SELECT count(*) FROM t") == 1


async def test_edited_applied_migration_is_refused_by_name(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {"0001_t.sql": "CREATE TABLE t (x int);", "0002_v.sql": "CREATE TABLE v (y int);"},
    )
    await migrate(conn, folder)
    write(folder, {"0002_v.sql": "CREATE TABLE v (y bigint);", "0003_w.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match="0002_v.sql"):
        await migrate(conn, folder)
    # Nothing after the refusal was applied.
    assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 2


async def test_failing_migration_is_rolled_back_and_not_recorded(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE ok (x int);",
            "0002_bad.sql": "CREATE TABLE half (x int); SELECT * FROM no_such_table;",
        },
    )
    with pytest.raises(MigrationError, match="0002_bad.sql"):
        await migrate(conn, folder)
    assert await conn.fetchval("SELECT to_regclass('ok') IS NOT NULL")
    assert await conn.fetchval("SELECT to_regclass('half') IS NULL")
    assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
    # Fixing the file lets the next start continue where it stopped.
    write(folder, {"0002_bad.sql": "CREATE TABLE half (x int);"})
    assert await migrate(conn, folder) == ["0002_bad.sql"]


async def test_concurrent_starters_apply_each_migration_once(
    empty_dsn: str, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "0001_log.sql": "CREATE TABLE log (file text); INSERT INTO log VALUES ('0001');",
            # The sleeps keep both migrators inside the race window.
            "0002_slow.sql": "SELECT pg_sleep(0.2); INSERT INTO log VALUES ('0002');",
            "0003_slow.sql": "SELECT pg_sleep(0.2); INSERT INTO log VALUES ('0003');",
        },
    )
    a = await asyncpg.connect(empty_dsn)
    b = await asyncpg.connect(empty_dsn)
    try:
        applied_a, applied_b = await asyncio.gather(migrate(a, folder), migrate(b, folder))
        files = await a.fetch("SELECT file FROM log ORDER BY file")
    finally:
        await a.close()
        await b.close()
    assert sorted(applied_a + applied_b) == ["0001_log.sql", "0002_slow.sql", "0003_slow.sql"]
    assert not set(applied_a) & set(applied_b)
    assert [r["file"] for r in files] == ["0001", "0002", "0003"]


async def test_new_migration_numbered_below_applied_one_is_refused(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"})
    await migrate(conn, folder)
    write(folder, {"0002_b.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match="0002_b.sql"):
        await migrate(conn, folder)


async def test_migrate_takes_a_pool(empty_dsn: str, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"0001_t.sql": "CREATE TABLE t (x int);"})
    pool = await create_pool(empty_dsn, max_size=2)
    try:
        assert await migrate(pool, folder) == ["0001_t.sql"]
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"init.sql": "SELECT 1;"}, "init.sql"),
        ({"0001_a.sql": "SELECT 1;", "1_b.sql": "SELECT 2;"}, "share version 1"),
        ({"0000_zero.sql": "SELECT 1;"}, "out of range"),
    ],
)
def test_misnamed_migration_files_are_refused(
    tmp_path: Path, files: dict[str, str], complaint: str
) -> None:
    with pytest.raises(MigrationError, match=complaint):
        read_migrations(write(tmp_path / "m", files))


def test_non_utf8_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_latin1.sql").write_bytes(b"SELECT '\xe9';")
    with pytest.raises(MigrationError, match="0001_latin1.sql"):
        read_migrations(tmp_path)


async def test_pool_round_trips_json_and_identifies_itself(db_pool: asyncpg.Pool) -> None:
    document = {"participants": [{"aor": "sip:alice@example.com", "name": None}], "n": 2}
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT $1::jsonb", document) == document
        assert await conn.fetchval("SELECT $1::json", [1, "x"]) == [1, "x"]
        assert await conn.fetchval("SELECT current_setting('application_name')") == (
            APPLICATION_NAME
        )
        assert await conn.fetchval("SELECT current_setting('statement_timeout')") == "30s"


async def test_statement_timeout_stops_runaway_queries(empty_dsn: str) -> None:
    pool = await create_pool(empty_dsn, max_size=1, statement_timeout_s=0.1)
    try:
        with pytest.raises(asyncpg.QueryCanceledError):
            await pool.fetchval("SELECT pg_sleep(5)")
    finally:
        await pool.close()


async def test_template_database_carries_the_real_migrations(db_pool: asyncpg.Pool) -> None:
    from storage.database import DEFAULT_MIGRATIONS_DIR

    expected = [m.filename for m in read_migrations(DEFAULT_MIGRATIONS_DIR)]
    recorded = [
        r["name"]
        for r in await db_pool.fetch("SELECT name FROM schema_migrations ORDER BY version")
    ]
    assert recorded == expected
    # And applying them again finds nothing to do.
    assert await migrate(db_pool) == []


@pytest.mark.parametrize("turn", [1, 2])
async def test_each_test_gets_a_fresh_database(db_dsn: str, turn: int) -> None:
    # Whichever turn runs second fails if it sees the first one's table.
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('freshness_probe') IS NULL")
        await conn.execute("CREATE TABLE freshness_probe (turn int)")
    finally:
        await conn.close()


async def test_ensure_database_creates_once_and_returns_its_dsn(
    pg_cluster: EmbeddedPostgres,
) -> None:
    name = f"ensure_{uuid.uuid4().hex[:12]}"
    try:
        first = await ensure_database(pg_cluster.dsn, name)
        second = await ensure_database(pg_cluster.dsn, name)
        assert first == second
        conn = await asyncpg.connect(first)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
        finally:
            await conn.close()
    finally:
        await drop_database(pg_cluster.dsn, name)


async def test_create_database_refuses_an_existing_name(pg_cluster: EmbeddedPostgres) -> None:
    with pytest.raises(DatabaseError, match="siprec"):
        await create_database(pg_cluster.dsn, "siprec")


async def test_odd_database_names_are_quoted_not_injected(pg_cluster: EmbeddedPostgres) -> None:
    name = 'we"ird; DROP DATABASE siprec'
    dsn = await ensure_database(pg_cluster.dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
        finally:
            await conn.close()
    finally:
        await drop_database(pg_cluster.dsn, name)
    with pytest.raises(DatabaseError):
        await ensure_database(pg_cluster.dsn, "x" * 64)


def test_dsn_with_database_keeps_socket_and_drops_old_dbname() -> None:
    dsn = "postgresql://siprec@/postgres?host=/var/lib/x%20y/run&port=5432&dbname=other"
    assert dsn_with_database(dsn, "siprec") == (
        "postgresql://siprec@/siprec?host=/var/lib/x%20y/run&port=5432"
    )
    assert dsn_with_database("postgresql://u:p@db.example:6432/a?sslmode=require", "b") == (
        "postgresql://u:p@db.example:6432/b?sslmode=require"
    )


async def test_unreachable_server_is_a_database_error() -> None:
    with pytest.raises(DatabaseError, match="cannot connect"):
        await ensure_database("postgresql://siprec@/x?host=/nonexistent-dir&port=5432", "y")


async def test_reachable_says_whether_the_database_answers(empty_dsn: str) -> None:
    pool = await create_pool(empty_dsn, max_size=1)
    assert await reachable(pool)
    await pool.close()
    assert not await reachable(pool)
