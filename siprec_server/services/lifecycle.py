"""The lifecycle services of one node, built from the config: the job store and the node's job
runner, the retention service and its scheduler, and the subject-request service. The
composition root (siprec_server/app.py) registers key custody's jobs on the same runner, starts
and stops them; the API and the command line use them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from siprec_server.compliance.retention import RetentionLimits
from siprec_server.config import Config
from siprec_server.services.jobs import Clock, JobRunner
from siprec_server.services.recording_rules import RecordingRulesService
from siprec_server.services.retention import RetentionScheduler, RetentionService
from siprec_server.services.subjects import RecordingRenderer, SubjectService
from storage.jobs import JobStore, PgJobStore
from storage.keys import KeyRing

__all__ = ["LifecycleServices", "build_lifecycle", "limits_of"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def limits_of(config: Config) -> RetentionLimits:
    r = config.retention
    return RetentionLimits(r.default_days, r.floor_days, r.ceiling_days)


@dataclass
class LifecycleServices:
    jobs: JobStore
    retention: RetentionService
    subjects: SubjectService
    runner: JobRunner | None = None
    scheduler: RetentionScheduler | None = None
    rules: RecordingRulesService | None = None

    def start(self) -> None:
        if self.runner is not None:
            self.runner.start()
        if self.scheduler is not None:
            self.scheduler.start()

    async def close(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.close()
        if self.runner is not None:
            await self.runner.close()


def build_lifecycle(db: asyncpg.Pool, config: Config, *, keys: KeyRing | None, node_id: str,
                    data_dir: Path, clock: Clock | None = None,
                    background: bool = True,
                    jobs: JobStore | None = None,
                    describe: RecordingRenderer | None = None) -> LifecycleServices:
    """The services; with `background`, also the job runner and (when retention is enabled)
    the scheduler, to be started with .start()."""
    now: Callable[[], datetime] = clock or _utc_now
    store = jobs or PgJobStore(db)
    retention = RetentionService(db, store, limits_of(config), now,
                                 batch_size=config.retention.batch_size)
    subjects = SubjectService(db, store, limits_of(config), now, data_dir / "bundles",
                              keys=keys, node_id=node_id,
                              scrypt_work_factor=config.lifecycle.scrypt_work_factor,
                              describe=describe)
    rules = RecordingRulesService(db, now, limits_of(config), node_id=node_id,
                                  default_action=config.rules.default_action,
                                  default_opt_out=config.rules.opt_out_default)
    services = LifecycleServices(store, retention, subjects, rules=rules)
    if background:
        services.runner = JobRunner(
            store, now, stale_after=timedelta(seconds=config.lifecycle.job_stale_after))
        retention.register_jobs(services.runner)
        subjects.register_jobs(services.runner)
        if config.retention.enabled:
            bundle_ttl = timedelta(days=config.lifecycle.bundle_ttl_days)
            services.scheduler = RetentionScheduler(
                retention, config.retention.interval,
                housekeeping=lambda: subjects.expire_bundles(bundle_ttl))
    return services
