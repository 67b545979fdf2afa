"""Erasures leave dead rows: the deleted wrapped data key, participants and metadata stay in the
table files (and in a file-level backup taken now) until VACUUM reclaims them. This sweeps the
tables an erasure touches soon after erasures happen, batched: one VACUUM per interval however
many recordings were erased (VACUUM scans every index of a table, too costly per erasure).

It narrows, it does not close, the window: reclaimed space is not zeroed at once, WAL and
backups keep what they had. Erased recordings become unreadable everywhere when the master key
version their data key was wrapped under is destroyed by the next rotation (README, "Erasure
reaches backups").
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from siprec_server.logs import get_logger
from storage.roles import vacuum

__all__ = ["ERASED_TABLES", "ErasureVacuum"]

log = get_logger("erasure_vacuum")

ERASED_TABLES = ("recording_keys", "participants", "metadata_events", "streams", "recordings")


class ErasureVacuum:
    def __init__(self, db: asyncpg.Pool, interval_s: float = 60.0, *,
                 owner_dsn: str | None = None) -> None:
        self._db = db
        self._owner_dsn = owner_dsn
        self._interval = interval_s
        self._seen: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.vacuums = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self) -> bool:
        """VACUUM the erased tables if a recording was erased since the last sweep."""
        latest = await self._db.fetchval(
            "SELECT max(seq) FROM audit_events WHERE action = 'recording.erase'") or 0
        if self._seen is not None and latest <= self._seen:
            return False
        first = self._seen is None
        self._seen = latest
        if first and latest == 0:
            return False
        skipped = await vacuum(self._owner_dsn or self._db, ERASED_TABLES)
        if skipped:
            log.warning("vacuum_skipped", tables=skipped,
                        hint="set database.migration_url to the owner role")
        self.vacuums += 1
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried next interval; logged
                log.warning("erasure_vacuum_failed", error=repr(exc)[:200])
            await asyncio.sleep(self._interval)
