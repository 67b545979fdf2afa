"""Background jobs as rows in PostgreSQL: created queued, claimed by any node, moved on with
progress, finished with a JSON result or failed with an error. A node that dies leaves its job
'running' with an `updated_at` that stops moving; after `stale_after` another node (or the same
one, restarted) claims it again, so every job handler must be resumable (do again what is not
yet done).

`JobStore` is the interface the services are written against; `PgJobStore` is its PostgreSQL
implementation on the `jobs` table (migration 0007), which every kind shares: key custody's
(init, rotate, reencrypt), retention runs and subject requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID, uuid4

from storage.database import Executor, transaction

__all__ = ["JOB_STATES", "Job", "JobStore", "PgJobStore"]

JOB_STATES = ("queued", "running", "done", "failed")
MAX_ERROR_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class Job:
    id: UUID
    kind: str
    state: str
    done: int
    total: int | None
    """None while the job does not know yet how much there is to do."""
    params: Mapping[str, Any]
    result: Mapping[str, Any] | None
    error: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    """The last change: its creation, claim or progress (a running job whose updated_at is older
    than stale_after is presumed dead)."""


class JobStore(Protocol):
    async def create(self, kind: str, params: Mapping[str, Any], *, created_by: str,
                     now: datetime, total: int | None = None,
                     unique: bool = False) -> Job | None:
        """A queued job. With `unique`, None when one of the same kind is already queued or
        running (a scheduler's tick must not pile up copies)."""
        ...

    async def claim(self, kinds: Sequence[str], *, now: datetime,
                    stale_after: timedelta) -> Job | None:
        """The oldest queued job of these kinds, or a running one nobody moved for
        `stale_after` (its node died), now 'running' for the caller."""
        ...

    async def progress(self, job_id: UUID, done: int, total: int | None, *, now: datetime,
                       params: Mapping[str, Any] | None = None) -> None:
        """How far a running job got (which also tells other nodes it is alive). `params`,
        when given, replaces the job's parameters: a step that must not be done twice on a
        resumption records there what it did."""
        ...

    async def finish(self, job_id: UUID, result: Mapping[str, Any], *, now: datetime) -> None: ...

    async def fail(self, job_id: UUID, error: str, *, now: datetime) -> None: ...

    async def get(self, job_id: UUID) -> Job | None: ...


_COLUMNS = """id, kind, state, done, total, params, result, error, created_by, created_at,
              updated_at"""


def _job(row: Any) -> Job:
    params = row["params"]
    result = row["result"]
    if isinstance(params, str):
        params = json.loads(params)
    if isinstance(result, str):
        result = json.loads(result)
    return Job(row["id"], row["kind"], row["state"], row["done"], row["total"], params or {},
               result, row["error"], row["created_by"], row["created_at"], row["updated_at"])


_CREATE_LOCK = 0x5EC0_10B5


class PgJobStore:
    """JobStore on the `jobs` table, through a pool, or through a connection when a job must be
    created in the caller's transaction (an approved key ceremony and its job, together)."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def create(self, kind: str, params: Mapping[str, Any], *, created_by: str,
                     now: datetime, total: int | None = None,
                     unique: bool = False) -> Job | None:
        async with transaction(self._db) as conn:
            if unique:
                # Serialises creators of one kind across nodes for this transaction only.
                await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                                   _CREATE_LOCK, kind)
                busy = await conn.fetchval(
                    "SELECT 1 FROM jobs WHERE kind = $1 AND state IN ('queued', 'running')",
                    kind)
                if busy:
                    return None
            row = await conn.fetchrow(
                f"""INSERT INTO jobs (id, kind, state, done, total, params, created_by,
                                      created_at, updated_at)
                    VALUES ($1, $2, 'queued', 0, $3, $4::text::jsonb, $5, $6, $6)
                    RETURNING {_COLUMNS}""",
                uuid4(), kind, total, json.dumps(dict(params)), created_by, now)
        return _job(row)

    async def claim(self, kinds: Sequence[str], *, now: datetime,
                    stale_after: timedelta) -> Job | None:
        row = await self._db.fetchrow(
            f"""UPDATE jobs SET state = 'running', updated_at = $2
                WHERE id = (
                    SELECT id FROM jobs
                    WHERE kind = ANY($1::text[])
                      AND (state = 'queued' OR (state = 'running' AND updated_at < $3))
                    ORDER BY created_at, id
                    LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING {_COLUMNS}""",
            list(kinds), now, now - stale_after)
        return None if row is None else _job(row)

    async def progress(self, job_id: UUID, done: int, total: int | None, *, now: datetime,
                       params: Mapping[str, Any] | None = None) -> None:
        await self._db.execute(
            """UPDATE jobs SET done = $2, total = COALESCE($3, total), updated_at = $4,
                               params = COALESCE($5::text::jsonb, params)
               WHERE id = $1 AND state = 'running'""",
            job_id, done, total, now, None if params is None else json.dumps(dict(params)))

    async def finish(self, job_id: UUID, result: Mapping[str, Any], *, now: datetime) -> None:
        await self._db.execute(
            """UPDATE jobs SET state = 'done', result = $2::text::jsonb, updated_at = $3,
                               done = COALESCE(total, done)
               WHERE id = $1""",
            job_id, json.dumps(dict(result)), now)

    async def fail(self, job_id: UUID, error: str, *, now: datetime) -> None:
        await self._db.execute(
            "UPDATE jobs SET state = 'failed', error = $2, updated_at = $3 WHERE id = $1",
            job_id, error[:MAX_ERROR_LENGTH], now)

    async def get(self, job_id: UUID) -> Job | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return None if row is None else _job(row)
