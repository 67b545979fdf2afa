"""`siprec-server retention run [--dry-run]` as an operator runs it: the dry run counts what
the run then erases, per policy, as JSON on stdout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from storage.audit import verify_audit_chain
from tests.integration.test_recordings_api import AGENT, ring_of_one, stored_recording
from tests.integration.test_users_cli import siprec_server


async def test_dry_run_then_run_from_the_command_line(
    db_dsn: str, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    ring = ring_of_one()
    now = datetime.now(UTC)
    old = await stored_recording(db_pool, ring, tmp_path, parties=[AGENT],
                                 started_at=now - timedelta(days=400))
    young = await stored_recording(db_pool, ring, tmp_path, parties=[AGENT],
                                   started_at=now - timedelta(days=10))
    code, out, err = await siprec_server(db_dsn, "retention", "run", "--dry-run")
    assert code == 0, err
    dry = json.loads(out)
    assert dry["dry_run"] is True and dry["total"] == 1
    assert dry["default"] == {"days": 365, "recordings": 1}
    assert await db_pool.fetchval("SELECT state FROM recordings WHERE id = $1", old) == "complete"

    code, out, err = await siprec_server(db_dsn, "retention", "run")
    assert code == 0, err
    run = json.loads(out)
    assert run["dry_run"] is False and run["default"]["erased"] == 1 and run["total"] == 1
    states = {r["id"]: r["state"] for r in await db_pool.fetch("SELECT id, state FROM recordings")}
    assert states == {old: "erased", young: "complete"}
    actors = {r["actor"] for r in await db_pool.fetch(
        "SELECT actor FROM audit_events WHERE action LIKE 'retention.%'")}
    assert all(a.startswith(("cli", "system:retention")) for a in actors), actors
    assert (await verify_audit_chain(db_pool)).ok


async def test_a_run_is_a_job_the_command_line_shows_and_follows(
    db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    code, _out, err = await siprec_server(db_dsn, "retention", "run")
    assert code == 0, err
    job_id = str(await db_pool.fetchval("SELECT id FROM jobs WHERE kind = 'retention.run'"))
    code, out, err = await siprec_server(db_dsn, "jobs", "show", job_id)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["id"], shown["kind"], shown["state"]) == (job_id, "retention.run", "done")
    assert shown["result"]["dry_run"] is False and shown["error"] is None
    code, out, err = await siprec_server(db_dsn, "jobs", "show", job_id, "--watch")
    assert code == 0 and "] 0/0 retention.run done" in out and '"state": "done"' in out, err
    code, out, err = await siprec_server(db_dsn, "jobs", "show",
                                         "00000000-0000-0000-0000-000000000000")
    assert code == 1 and "no job" in err
    code, out, err = await siprec_server(db_dsn, "jobs", "show", "42")
    assert code == 2 and "not a job id" in err
