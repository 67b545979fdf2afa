"""Running background jobs: any node claims queued jobs of the kinds it has handlers for, runs
them with progress, and records their result or failure. A job whose node died is claimed again
after `stale_after` (storage/jobs.py), so handlers are written to be resumed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from siprec_server.logs import get_logger
from storage.jobs import Job, JobStore

__all__ = ["Clock", "JobContext", "JobCounters", "JobHandler", "JobRunner"]

log = get_logger("jobs")

Clock = Callable[[], datetime]


@dataclass
class JobCounters:
    jobs_started: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0


@dataclass
class JobContext:
    """What a handler gets: its job, and how to report progress (which also tells other nodes
    the job is alive)."""

    job: Job
    store: JobStore
    clock: Clock
    done: int = 0
    total: int | None = None

    async def progress(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        await self.store.progress(self.job.id, done, total, now=self.clock())


JobHandler = Callable[[JobContext], Awaitable[Mapping[str, Any]]]


@dataclass
class JobRunner:
    store: JobStore
    handlers: Mapping[str, JobHandler]
    clock: Clock
    stale_after: timedelta = timedelta(minutes=10)
    poll_interval_s: float = 2.0
    counters: JobCounters = field(default_factory=JobCounters)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def run_once(self) -> Job | None:
        """Claim one job and run it to its end; None when there was nothing to do."""
        job = await self.store.claim(list(self.handlers), now=self.clock(),
                                     stale_after=self.stale_after)
        if job is None:
            return None
        self.counters.jobs_started += 1
        context = JobContext(job, self.store, self.clock, job.done, job.total)
        log.info("job_started", job_id=str(job.id), kind=job.kind)
        try:
            result = await self.handlers[job.kind](context)
        except asyncio.CancelledError:
            raise  # shutting down: left 'running', another node (or our restart) resumes it
        except Exception as exc:  # noqa: BLE001 - recorded on the job, counted, logged
            self.counters.jobs_failed += 1
            log.error("job_failed", job_id=str(job.id), kind=job.kind,
                      error=type(exc).__name__)
            await self.store.fail(job.id, f"{type(exc).__name__}: {exc}", now=self.clock())
        else:
            self.counters.jobs_done += 1
            await self.store.finish(job.id, result, now=self.clock())
            log.info("job_done", job_id=str(job.id), kind=job.kind)
        return await self.store.get(job.id)

    async def run_until_idle(self) -> list[Job]:
        ran: list[Job] = []
        while (job := await self.run_once()) is not None:
            ran.append(job)
        return ran

    def wake(self) -> None:
        """A job was just queued here: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_until_idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away; try later
                log.warning("job_poll_failed", error=type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
