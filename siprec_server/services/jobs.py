"""Running background jobs: a node's one runner claims queued jobs of the kinds registered on it
(key custody's, retention runs, subject requests), runs them one at a time with progress, and
records their result or failure. A job whose node died is claimed again after `stale_after`
(storage/jobs.py), so handlers are written to be resumed.

A handler that raises fails its job (the error is recorded on it); a job interrupted by a crash,
a shutdown, or a database that went away before the failure could be recorded stays 'running'
and is resumed once stale."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from siprec_server.logs import get_logger
from siprec_server.services.periodic import Periodic
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

    async def progress(self, done: int, total: int | None = None, *,
                       params: Mapping[str, Any] | None = None) -> None:
        """`done` of `total` (None: unchanged). `params` replaces the job's parameters, for a
        step that must not be done twice when the job is resumed."""
        self.done = done
        if total is not None:
            self.total = total
        if params is not None:
            self.job = dataclasses.replace(self.job, params=dict(params))
        await self.store.progress(self.job.id, done, total, now=self.clock(), params=params)


JobHandler = Callable[[JobContext], Awaitable[Mapping[str, Any]]]


def _always() -> bool:
    return True


class JobRunner:
    def __init__(self, store: JobStore, clock: Clock, *,
                 stale_after: timedelta = timedelta(minutes=10),
                 poll_interval_s: float = 2.0) -> None:
        self.store = store
        self.clock = clock
        self.stale_after = stale_after
        self.counters = JobCounters()
        self._handlers: dict[str, tuple[JobHandler, Callable[[], bool]]] = {}
        self._loop = Periodic(self.run_until_idle, poll_interval_s, log=log,
                              failure="job_poll_failed")

    def register(self, kind: str, handler: JobHandler, *,
                 ready: Callable[[], bool] = _always) -> None:
        """Run jobs of `kind` with `handler`, whenever `ready()` says this node can (a key
        rotation needs the master key at hand: not while the node is sealed)."""
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind!r} jobs is registered already")
        self._handlers[kind] = (handler, ready)

    def ready_kinds(self) -> list[str]:
        return [kind for kind, (_, ready) in self._handlers.items() if ready()]

    async def run_once(self) -> Job | None:
        """Claim one job and run it to its end; None when there was nothing to do."""
        kinds = self.ready_kinds()
        if not kinds:
            return None
        job = await self.store.claim(kinds, now=self.clock(), stale_after=self.stale_after)
        if job is None:
            return None
        self.counters.jobs_started += 1
        context = JobContext(job, self.store, self.clock, job.done, job.total)
        handler, _ready = self._handlers[job.kind]
        log.info("job_started", job_id=str(job.id), kind=job.kind)
        try:
            result = await handler(context)
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
        """Run jobs one after the other until none is left that this node can run now."""
        ran: list[Job] = []
        while (job := await self.run_once()) is not None:
            ran.append(job)
        return ran

    def wake(self) -> None:
        """A job was just queued here, or became runnable: look now rather than at the next
        poll."""
        self._loop.wake()

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
