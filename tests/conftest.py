"""Shared fixtures. Database: one throwaway embedded cluster per test run, a migrated template
database, and a fresh copy of it for every test that asks for `db_dsn` / `db_pool`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import uvloop

from storage.database import (
    DEFAULT_MIGRATIONS_DIR,
    create_database,
    create_pool,
    drop_database,
    ensure_database,
    migrate,
)
from storage.embedded_postgres import EmbeddedPostgres

_T = TypeVar("_T")

TEMPLATE_DATABASE = "siprec_template"


def run_in_own_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine from synchronous fixture code without touching the event loop
    pytest-asyncio manages for the current thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=120)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres]:
    """A running EmbeddedPostgres for the whole test run; `.dsn` is a superuser DSN."""
    # pytest's own tmp dirs are 0700 under root: the unprivileged postgres user could not
    # enter them.
    root = Path(tempfile.mkdtemp(prefix="siprec-test-pg-"))
    root.chmod(0o755)
    # Throwaway: fsync off makes initdb and the per-test CREATE DATABASE much cheaper.
    cluster = EmbeddedPostgres(root / "pg", durable=False)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_template(pg_cluster: EmbeddedPostgres) -> str:
    """Name of a database with the real migrations applied, used as TEMPLATE by `db_dsn`."""

    async def prepare() -> None:
        dsn = await ensure_database(pg_cluster.dsn, TEMPLATE_DATABASE)
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, DEFAULT_MIGRATIONS_DIR)
        finally:
            await conn.close()
        admin = await asyncpg.connect(pg_cluster.dsn)
        try:
            # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template;
            # forbidding connections keeps one leaky test from breaking every later one.
            await admin.execute(
                f"ALTER DATABASE {TEMPLATE_DATABASE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            )
        finally:
            await admin.close()

    run_in_own_loop(prepare())
    return TEMPLATE_DATABASE


@pytest.fixture
async def db_dsn(pg_cluster: EmbeddedPostgres, migrated_template: str) -> AsyncIterator[str]:
    """DSN of a fresh, fully migrated database of this test's own; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:20]}"
    dsn = await create_database(pg_cluster.dsn, name, template=migrated_template)
    try:
        yield dsn
    finally:
        await drop_database(pg_cluster.dsn, name)


@pytest.fixture
async def db_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool (storage.database.create_pool) on this test's fresh database."""
    pool = await create_pool(db_dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        try:
            # A test that leaked an acquired connection must not hang the run.
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            with contextlib.suppress(Exception):
                pool.terminate()


def pytest_asyncio_loop_factories(config: object, item: object) -> dict[str, object]:
    """Tests run on uvloop, the loop the server runs on in production (its transports differ
    from asyncio's in ways that matter, e.g. they are not asyncio.Transport subclasses)."""
    return {"uvloop": uvloop.new_event_loop}
