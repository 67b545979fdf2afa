"""Jobs as rows: claimed once, reclaimed by another node when their runner stopped moving them,
one scheduled run at a time, results and failures recorded (storage/jobs.py,
siprec_server/services/jobs.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from siprec_server.cli_jobs import progress_bar
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

    runner = JobRunner(store, lambda: T0)
    runner.register("a", works)
    runner.register("b", breaks)
    good = await store.create("a", {}, created_by="u", now=T0)
    bad = await store.create("b", {}, created_by="u", now=T0 + timedelta(seconds=1))
    ran = await runner.run_until_idle()
    assert [(j.id, j.state) for j in ran] == [(good.id, "done"), (bad.id, "failed")]  # type: ignore[union-attr]
    assert ran[0].result == {"ok": True} and ran[1].error == "RuntimeError: disk on fire"
    assert (runner.counters.jobs_done, runner.counters.jobs_failed) == (1, 1)


def test_the_progress_bar_fills_with_the_job_and_waits_for_a_total() -> None:
    assert progress_bar(0, None, width=4) == "[....] 0/?"
    assert progress_bar(3, 0, width=4) == "[....] 3/0"
    assert progress_bar(1, 2, width=4) == "[##..] 1/2  50.0%"
    assert progress_bar(2, 2, width=4) == "[####] 2/2 100.0%"


async def test_a_kind_waits_while_this_node_cannot_run_it(db_pool: asyncpg.Pool) -> None:
    store = PgJobStore(db_pool)
    sealed = True

    async def rotate(context: JobContext) -> Mapping[str, Any]:
        return {"rotated": True}

    runner = JobRunner(store, lambda: T0)
    runner.register("rotate", rotate, ready=lambda: not sealed)
    job = await store.create("rotate", {}, created_by="ceremony", now=T0)
    assert job is not None and await runner.run_until_idle() == []
    sealed = False  # the custodians' shares came in
    (ran,) = await runner.run_until_idle()
    assert (ran.id, ran.state, ran.result) == (job.id, "done", {"rotated": True})


async def test_a_resumed_job_finds_what_its_first_run_recorded(db_pool: asyncpg.Pool) -> None:
    store = PgJobStore(db_pool)
    job = await store.create("rotate", {"ceremony_id": "c1"}, created_by="ceremony", now=T0)
    assert job is not None
    first = await store.claim(["rotate"], now=T0, stale_after=STALE)
    assert first is not None
    context = JobContext(first, store, lambda: T0)
    await context.progress(0, params={"ceremony_id": "c1", "to_version": "v2"})
    await context.progress(3, 10)
    assert context.job.params["to_version"] == "v2"
    # Its node dies here; another one takes the job over once it is stale.
    again = await store.claim(["rotate"], now=T0 + STALE + timedelta(seconds=1),
                              stale_after=STALE)
    assert again is not None and again.params == {"ceremony_id": "c1", "to_version": "v2"}
    assert (again.done, again.total) == (3, 10)
