"""Least privilege: the server works through a role that cannot change or delete an audit event,
while migrations (and VACUUM) run as the owner. The embedded cluster creates its own roles; an
external database gets them from the operator ([database] url + migration_url)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from siprec_server.app import start_server
from siprec_server.config import load_config
from storage.embedded_postgres import EmbeddedPostgres, cluster_root_for
from storage.roles import APP_ROLE, dsn_as
from tests.integration.conftest import server_env
from tests.integration.test_interop import wait_for_state
from tests.integration.test_key_custody import record_call
from tests.integration.test_operations import embedded_env, record_a_call, sip_port
from tests.server_process import ServerProcess


async def assert_audit_is_append_only(app_dsn: str) -> None:
    conn = await asyncpg.connect(app_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_events") > 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_events SET outcome = 'success'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE audit_events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM schema_migrations")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE intruder (x int)")
    finally:
        await conn.close()


async def test_embedded_server_runs_as_a_role_that_cannot_rewrite_the_audit_trail(
    data_dir: Path
) -> None:
    env = embedded_env(data_dir)
    server = ServerProcess(env)
    await server.start()
    try:
        await record_a_call(sip_port(env))
        owner_dsn = EmbeddedPostgres(cluster_root_for(data_dir)).attach()
        owner = await asyncpg.connect(owner_dsn)
        try:
            roles = {r["usename"] for r in await owner.fetch(
                "SELECT usename FROM pg_stat_activity WHERE application_name = 'siprec-server'")}
            assert roles == {APP_ROLE}, roles
            owners = {r["tableowner"] for r in await owner.fetch(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
            assert APP_ROLE not in owners
        finally:
            await owner.close()
        await assert_audit_is_append_only(dsn_as(owner_dsn, APP_ROLE))
    finally:
        await server.stop()


async def test_external_database_with_an_owner_and_an_application_role(
    db_dsn: str, data_dir: Path
) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(db_dsn)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    finally:
        await admin.close()
    app_dsn = dsn_as(db_dsn, role)
    env = server_env(app_dsn, data_dir, media__bind_address="127.0.0.1",
                     database__migration_url=db_dsn)
    server = await start_server(load_config(env=env))
    try:
        assert await server.db.fetchval("SELECT current_user") == role
        call_id, _ = await record_call(server)
        await wait_for_state(server, call_id, "complete")
        await asyncio.sleep(0.2)
        await assert_audit_is_append_only(app_dsn)
    finally:
        await server.stop()
    admin = await asyncpg.connect(db_dsn)
    try:
        await admin.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()
