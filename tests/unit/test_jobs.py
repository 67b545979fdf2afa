"""Jobs as rows: claimed once, reclaimed by another node when their runner stopped moving them,
one scheduled run at a time, results and failures recorded (storage/jobs.py,
siprec_server/services/jobs.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from siprec_server.services.jobs import JobContext, JobRunner
from storage.jobs import PgJobStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STALE = timedelta(minutes=10)


async def test_a_job_is_claimed_once_and_reclaimed_when_its_node_died(
    db_pool: asyncpg.Pool,
) -> None:
    store = PgJobStore(db_pool)
    job = await store.create("retention.run", {"dry_run": True}, created_by="u1", now=T0)
    assert job is not None and job.state == "queued"
    first = await store.claim(["retention.run"], now=T0, stale_after=STALE)
    assert first is not None and first.id == job.id and first.state == "running"
    assert await store.claim(["retention.run"], now=T0 + timedelta(minutes=1),
                             stale_after=STALE) is None
    await store.progress(job.id, 5, 10, now=T0 + timedelta(minutes=5))
    assert await store.claim(["retention.run"], now=T0 + timedelta(minutes=14),
                             stale_after=STALE) is None  # moved 9 minutes ago: alive
    again = await store.claim(["retention.run"], now=T0 + timedelta(minutes=16),
                              stale_after=STALE)
    assert again is not None and (again.done, again.total) == (5, 10)
    await store.finish(job.id, {"total": 10}, now=T0 + timedelta(minutes=17))
    done = await store.get(job.id)
    assert done is not None and (done.state, done.done, done.result) == ("done", 10,
                                                                       {"total": 10})
    assert await store.claim(["key.rotate"], now=T0, stale_after=STALE) is None


async def test_only_one_unique_job_of_a_kind_waits_or_runs(db_pool: asyncpg.Pool) -> None:
    store = PgJobStore(db_pool)
    assert await store.create("retention.run", {}, created_by="s", now=T0, unique=True)
    assert await store.create("retention.run", {}, created_by="s", now=T0, unique=True) is None
    assert await store.create("subject.access", {}, created_by="s", now=T0, unique=True)


async def test_the_runner_records_results_and_failures(db_pool: asyncpg.Pool) -> None:
    store = PgJobStore(db_pool)

    async def works(context: JobContext) -> Mapping[str, Any]:
        await context.progress(1, 2)
        return {"ok": True}

    async def breaks(context: JobContext) -> Mapping[str, Any]:
        raise RuntimeError("disk on fire")

    runner = JobRunner(store, {"a": works, "b": breaks}, lambda: T0)
    good = await store.create("a", {}, created_by="u", now=T0)
    bad = await store.create("b", {}, created_by="u", now=T0 + timedelta(seconds=1))
    ran = await runner.run_until_idle()
    assert [(j.id, j.state) for j in ran] == [(good.id, "done"), (bad.id, "failed")]  # type: ignore[union-attr]
    assert ran[0].result == {"ok": True} and ran[1].error == "RuntimeError: disk on fire"
    assert (runner.counters.jobs_done, runner.counters.jobs_failed) == (1, 1)
