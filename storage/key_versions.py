"""The key custody's tables (migration 0007): master key versions, custodians' shares, dual-control
ceremonies and background jobs. All their SQL is here; what it means is storage/custody.py and
siprec_server/services/keys.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID, uuid4

import asyncpg

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection

__all__ = [
    "Approval",
    "Ceremony",
    "Job",
    "KeyVersion",
    "ShareRecord",
]

VERSION_STATES = ("active", "retiring", "retired", "destroyed")


# ------------------------------------------------------------------------------ versions


@dataclass(frozen=True, slots=True)
class KeyVersion:
    id: str
    seq: int
    custody: str
    state: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    destroyed_at: datetime | None
    cryptoperiod_days: int
    commitment: bytes | None
    threshold: int | None
    shares: int | None
    sealed_key: bytes | None
    sealed_by: str | None
    token_label: str | None
    reminded_at: datetime | None

    @property
    def live(self) -> bool:
        """Its key is still needed (it wraps data keys, or will until the re-wrap ends)."""
        return self.state in ("active", "retiring")

    def age_days(self, now: datetime) -> int:
        return max(0, (now - (self.activated_at or self.created_at)).days)

    def rotation_due_at(self) -> datetime:
        return (self.activated_at or self.created_at) + timedelta(days=self.cryptoperiod_days)


def _version(row: Any) -> KeyVersion:
    return KeyVersion(
        row["id"], row["seq"], row["custody"], row["state"], row["created_at"],
        row["activated_at"], row["retired_at"], row["destroyed_at"], row["cryptoperiod_days"],
        bytes(row["commitment"]) if row["commitment"] is not None else None,
        row["threshold"], row["shares"],
        bytes(row["sealed_key"]) if row["sealed_key"] is not None else None,
        row["sealed_by"], row["token_label"], row["reminded_at"],
    )


async def list_versions(db: Executor) -> list[KeyVersion]:
    return [_version(r) for r in await db.fetch("SELECT * FROM master_key_versions ORDER BY seq")]


async def get_version(db: Executor, version_id: str) -> KeyVersion | None:
    row = await db.fetchrow("SELECT * FROM master_key_versions WHERE id = $1", version_id)
    return _version(row) if row else None


async def insert_version(
    conn: asyncpg.Connection, *, version_id: str, custody: str, now: datetime,
    cryptoperiod_days: int, commitment: bytes | None = None, threshold: int | None = None,
    shares: int | None = None, token_label: str | None = None, state: str = "active",
) -> KeyVersion:
    """A new version; when it is active, the active one before it becomes retiring (call in a
    transaction)."""
    if state == "active":
        await conn.execute(
            "UPDATE master_key_versions SET state = 'retiring', retired_at = $1 "
            "WHERE state = 'active'", now)
    row = await conn.fetchrow(
        """INSERT INTO master_key_versions (id, seq, custody, state, created_at, activated_at,
               cryptoperiod_days, commitment, threshold, shares, token_label)
           VALUES ($1, (SELECT coalesce(max(seq), 0) + 1 FROM master_key_versions), $2, $3, $4,
                   CASE WHEN $3::text = 'active' THEN $4::timestamptz END, $5, $6, $7, $8, $9)
           RETURNING *""",
        version_id, custody, state, now, cryptoperiod_days, commitment, threshold, shares,
        token_label)
    return _version(row)


async def seal_version_under(conn: Executor, version_id: str, sealed_key: bytes,
                             sealed_by: str) -> None:
    await conn.execute(
        "UPDATE master_key_versions SET sealed_key = $2, sealed_by = $3 WHERE id = $1",
        version_id, sealed_key, sealed_by)


async def mark_destroyed(conn: Executor, version_id: str, now: datetime) -> None:
    await conn.execute(
        """UPDATE master_key_versions SET state = 'destroyed', destroyed_at = $2,
               retired_at = coalesce(retired_at, $2), sealed_key = NULL
           WHERE id = $1""", version_id, now)
    # Envelopes of a destroyed version not fetched yet are of no use to anyone.
    await conn.execute("UPDATE key_shares SET envelope = NULL WHERE version_id = $1",
                       version_id)


async def mark_reminded(db: Executor, version_id: str, now: datetime) -> None:
    await db.execute("UPDATE master_key_versions SET reminded_at = $2 WHERE id = $1",
                     version_id, now)


# ------------------------------------------------------------------------------ shares


@dataclass(frozen=True, slots=True)
class ShareRecord:
    version_id: str
    x: int
    custodian_id: UUID
    digest: bytes
    recipient_kind: str
    recipient: str | None
    fingerprint: str
    fetched_at: datetime | None
    has_envelope: bool


async def insert_share(conn: Executor, *, version_id: str, x: int, custodian_id: UUID,
                       digest: bytes, recipient_kind: str, recipient: str | None,
                       fingerprint: str, envelope: str) -> None:
    await conn.execute(
        """INSERT INTO key_shares (version_id, x, custodian_id, digest, recipient_kind,
                                   recipient, fingerprint, envelope)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        version_id, x, custodian_id, digest, recipient_kind, recipient, fingerprint, envelope)


async def shares_of(db: Executor, version_id: str) -> list[ShareRecord]:
    rows = await db.fetch(
        """SELECT version_id, x, custodian_id, digest, recipient_kind, recipient, fingerprint,
                  fetched_at, envelope IS NOT NULL AS has_envelope
           FROM key_shares WHERE version_id = $1 ORDER BY x""", version_id)
    return [ShareRecord(r["version_id"], r["x"], r["custodian_id"], bytes(r["digest"]),
                        r["recipient_kind"], r["recipient"], r["fingerprint"], r["fetched_at"],
                        r["has_envelope"]) for r in rows]


async def take_envelopes(db: Executor, custodian_id: UUID,
                         now: datetime) -> list[tuple[str, int, str]]:
    """The custodian's waiting envelopes (version id, x, armored text), each given out once:
    the stored copy is gone when this returns."""
    rows = await db.fetch(
        """UPDATE key_shares s SET envelope = NULL, fetched_at = $2
           FROM (SELECT version_id, x, envelope FROM key_shares
                 WHERE custodian_id = $1 AND envelope IS NOT NULL FOR UPDATE) old
           WHERE s.version_id = old.version_id AND s.x = old.x
           RETURNING old.version_id, old.x, old.envelope""", custodian_id, now)
    return [(r["version_id"], r["x"], r["envelope"]) for r in rows]


# ------------------------------------------------------------------------------ ceremonies


@dataclass(frozen=True, slots=True)
class Approval:
    user_id: UUID
    username: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Ceremony:
    id: UUID
    kind: str
    state: str
    needed: int
    params: dict[str, Any]
    created_by: str
    created_at: datetime
    expires_at: datetime
    job_id: UUID | None
    approvals: tuple[Approval, ...]


async def create_ceremony(db: Executor, *, kind: str, needed: int, params: dict[str, Any],
                          created_by: str, now: datetime, window: timedelta) -> UUID:
    ceremony_id = uuid4()
    await db.execute(
        """INSERT INTO key_ceremonies (id, kind, state, needed, params, created_by, created_at,
                                       expires_at)
           VALUES ($1, $2, 'pending', $3, $4::text::jsonb, $5, $6, $7)""",
        ceremony_id, kind, needed, json.dumps(params), created_by, now, now + window)
    return ceremony_id


async def get_ceremony(db: Executor, ceremony_id: UUID, *,
                       for_update: bool = False) -> Ceremony | None:
    row = await db.fetchrow(
        "SELECT * FROM key_ceremonies WHERE id = $1" + (" FOR UPDATE" if for_update else ""),
        ceremony_id)
    if row is None:
        return None
    approvals = await db.fetch(
        """SELECT a.user_id, u.username, a.at FROM key_ceremony_approvals a
           JOIN users u ON u.id = a.user_id WHERE a.ceremony_id = $1 ORDER BY a.at""",
        ceremony_id)
    params = row["params"]
    if isinstance(params, str):
        params = json.loads(params)
    return Ceremony(row["id"], row["kind"], row["state"], row["needed"], params,
                    row["created_by"], row["created_at"], row["expires_at"], row["job_id"],
                    tuple(Approval(a["user_id"], a["username"], a["at"]) for a in approvals))


async def add_approval(db: Executor, ceremony_id: UUID, user_id: UUID, now: datetime,
                       source: str | None) -> bool:
    """False when this user already approved."""
    result = await db.execute(
        """INSERT INTO key_ceremony_approvals (ceremony_id, user_id, at, source)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""", ceremony_id, user_id, now, source)
    return bool(result.endswith(" 1"))


async def set_ceremony_state(db: Executor, ceremony_id: UUID, state: str,
                             job_id: UUID | None = None) -> None:
    await db.execute("UPDATE key_ceremonies SET state = $2, job_id = coalesce($3, job_id) "
                     "WHERE id = $1", ceremony_id, state, job_id)


async def pending_ceremonies(db: Executor) -> list[UUID]:
    rows = await db.fetch("SELECT id FROM key_ceremonies WHERE state = 'pending' "
                          "ORDER BY created_at")
    return [r["id"] for r in rows]


# ------------------------------------------------------------------------------ jobs


@dataclass(frozen=True, slots=True)
class Job:
    id: UUID
    kind: str
    state: str
    done: int
    total: int
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    runner: str | None
    heartbeat_at: datetime | None


def _job(row: Any) -> Job:
    params, result = row["params"], row["result"]
    if isinstance(params, str):
        params = json.loads(params)
    if isinstance(result, str):
        result = json.loads(result)
    return Job(row["id"], row["kind"], row["state"], row["done"], row["total"], params, result,
               row["error"], row["created_by"], row["created_at"], row["started_at"],
               row["finished_at"], row["runner"], row["heartbeat_at"])


async def create_job(db: Executor, *, kind: str, params: dict[str, Any], created_by: str,
                     now: datetime, total: int = 0) -> UUID:
    job_id = uuid4()
    await db.execute(
        """INSERT INTO jobs (id, kind, state, total, params, created_by, created_at)
           VALUES ($1, $2, 'queued', $3, $4::text::jsonb, $5, $6)""",
        job_id, kind, total, json.dumps(params), created_by, now)
    return job_id


async def get_job(db: Executor, job_id: UUID) -> Job | None:
    row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    return _job(row) if row else None


async def claim_job(db: Executor, kinds: Sequence[str], runner: str, now: datetime,
                    stale_after: timedelta) -> Job | None:
    """The oldest queued job of these kinds, or a running one whose runner stopped beating;
    now this runner's."""
    row = await db.fetchrow(
        """UPDATE jobs SET state = 'running', runner = $2, heartbeat_at = $3,
               started_at = coalesce(started_at, $3)
           WHERE id = (SELECT id FROM jobs
                       WHERE kind = ANY($1::text[])
                         AND (state = 'queued'
                              OR (state = 'running' AND (heartbeat_at < $4 OR runner = $2)))
                       ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
           RETURNING *""", list(kinds), runner, now, now - stale_after)
    return _job(row) if row else None


async def job_progress(db: Executor, job_id: UUID, *, done: int, total: int | None = None,
                       now: datetime) -> None:
    await db.execute(
        "UPDATE jobs SET done = $2, total = coalesce($3, total), heartbeat_at = $4 "
        "WHERE id = $1", job_id, done, total, now)


async def finish_job(db: Executor, job_id: UUID, *, state: str, now: datetime,
                     result: dict[str, Any] | None = None, error: str | None = None) -> None:
    await db.execute(
        """UPDATE jobs SET state = $2, finished_at = $3, result = $4::text::jsonb, error = $5,
               heartbeat_at = $3
           WHERE id = $1""",
        job_id, state, now, json.dumps(result) if result is not None else None, error)
