"""Deliveries and webhooks as rows (migration 0012): the recording-event outbox the triggers
fill, its fan-out into one row per destination or endpoint, and the lease-based claiming that
lets any node work them (a node that dies mid-attempt leaves a lease that runs out)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID, uuid4

import asyncpg

__all__ = [
    "Delivery",
    "RecordingEvent",
    "WebhookDelivery",
    "claim_delivery",
    "claim_webhook",
    "deliveries_of",
    "delivery_done",
    "delivery_failed",
    "fan_out",
    "list_webhook_deliveries",
    "metadata_documents",
    "retry_delivery",
    "retry_webhook",
    "webhook_done",
    "webhook_failed",
]

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection
MAX_ERROR = 1000


@dataclass(frozen=True, slots=True)
class RecordingEvent:
    seq: int
    recording_id: UUID
    event: str
    at: datetime
    restricted: bool
    state: str | None
    call_id: str | None
    session_id: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: UUID
    recording_id: UUID
    destination: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    recipient_fingerprint: str | None
    files: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: UUID
    endpoint: str
    event_seq: int
    event: str
    recording_id: UUID | None
    payload: Mapping[str, Any]
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


_D_COLUMNS = """id, recording_id, destination, state, attempts, next_attempt_at, last_error,
                recipient_fingerprint, files, created_at, updated_at, delivered_at"""
_W_COLUMNS = """id, endpoint, event_seq, event, recording_id, payload, state, attempts,
                next_attempt_at, last_status, last_error, created_at, delivered_at"""


def _delivery(row: Any) -> Delivery:
    return Delivery(row["id"], row["recording_id"], row["destination"], row["state"],
                    row["attempts"], row["next_attempt_at"], row["last_error"],
                    row["recipient_fingerprint"], _json(row["files"]) or [], row["created_at"],
                    row["updated_at"], row["delivered_at"])


def _webhook(row: Any) -> WebhookDelivery:
    return WebhookDelivery(row["id"], row["endpoint"], row["event_seq"], row["event"],
                           row["recording_id"], _json(row["payload"]) or {}, row["state"],
                           row["attempts"], row["next_attempt_at"], row["last_status"],
                           row["last_error"], row["created_at"], row["delivered_at"])


# ------------------------------------------------------------------------------ fan-out


async def fan_out(
    db: asyncpg.Pool, *, now: datetime, batch: int,
    destinations: Mapping[str, bool],
    endpoints: Mapping[str, tuple[frozenset[str], Any]],
) -> list[RecordingEvent]:
    """Turn up to `batch` undispatched recording events into rows: a delivery per destination
    for each sealed recording (`destinations`: name -> include restricted recordings), and a
    webhook delivery per endpoint subscribed to the event (`endpoints`: name -> (events,
    payload builder taking a RecordingEvent)). Events are claimed with SKIP LOCKED, so nodes
    share the work; each is dispatched once."""
    async with db.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT e.seq, e.recording_id, e.event, e.at, r.restricted, r.state, r.call_id,
                      r.session_id
               FROM recording_events e LEFT JOIN recordings r ON r.id = e.recording_id
               WHERE NOT e.dispatched ORDER BY e.seq LIMIT $1
               FOR UPDATE OF e SKIP LOCKED""", batch)
        events = [RecordingEvent(r["seq"], r["recording_id"], r["event"], r["at"],
                                 bool(r["restricted"]), r["state"], r["call_id"],
                                 r["session_id"]) for r in rows]
        for event in events:
            if event.event == "sealed" and event.state not in (None, "erased"):
                for name, include_restricted in destinations.items():
                    if event.restricted and not include_restricted:
                        continue
                    await conn.execute(
                        """INSERT INTO deliveries (id, recording_id, destination, state,
                                                   next_attempt_at, created_at, updated_at)
                           VALUES ($1, $2, $3, 'pending', $4, $4, $4)
                           ON CONFLICT (recording_id, destination) DO NOTHING""",
                        uuid4(), event.recording_id, name, now)
            for name, (wanted, payload_of) in endpoints.items():
                if f"recording.{event.event}" not in wanted:
                    continue
                await conn.execute(
                    """INSERT INTO webhook_deliveries (id, endpoint, event_seq, event,
                                                       recording_id, payload, state,
                                                       next_attempt_at, created_at,
                                                       updated_at)
                       VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, 'pending', $7, $7, $7)
                       ON CONFLICT (endpoint, event_seq) DO NOTHING""",
                    uuid4(), name, event.seq, f"recording.{event.event}", event.recording_id,
                    json.dumps(payload_of(event)), now)
        if events:
            # Consumed: the rows made from them are the record (the outbox does not grow).
            await conn.execute("DELETE FROM recording_events WHERE seq = ANY($1::bigint[])",
                               [e.seq for e in events])
    return events


# ------------------------------------------------------------------------------ deliveries


async def claim_delivery(db: Executor, *, destinations: Sequence[str], now: datetime,
                         lease: timedelta, node_id: str) -> Delivery | None:
    """The oldest due delivery to one of `destinations` (pending, or running with its lease
    run out), now running here with one more attempt counted."""
    row = await db.fetchrow(
        f"""UPDATE deliveries SET state = 'running', attempts = attempts + 1,
                   lease_until = $2 + $3::interval, node_id = $4, updated_at = $2
            WHERE id = (
                SELECT id FROM deliveries
                WHERE destination = ANY($1::text[]) AND next_attempt_at <= $2
                  AND (state = 'pending' OR (state = 'running' AND lease_until < $2))
                ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {_D_COLUMNS}""",
        list(destinations), now, lease, node_id)
    return None if row is None else _delivery(row)


async def delivery_done(db: Executor, delivery_id: UUID, *, now: datetime,
                        files: list[dict[str, Any]], fingerprint: str) -> None:
    await db.execute(
        """UPDATE deliveries SET state = 'delivered', delivered_at = $2, updated_at = $2,
                  files = $3::text::jsonb, recipient_fingerprint = $4, lease_until = NULL,
                  last_error = NULL
           WHERE id = $1""", delivery_id, now, json.dumps(files), fingerprint)


async def delivery_failed(db: Executor, delivery_id: UUID, *, now: datetime, error: str,
                          retry_at: datetime | None, state: str = "failed",
                          fingerprint: str | None = None) -> None:
    """A failed attempt: pending again at `retry_at`, or given up (`state` failed/cancelled)
    when it is None."""
    await db.execute(
        """UPDATE deliveries SET state = $3, next_attempt_at = COALESCE($4, next_attempt_at),
                  last_error = $5, updated_at = $2, lease_until = NULL,
                  recipient_fingerprint = COALESCE($6, recipient_fingerprint)
           WHERE id = $1""",
        delivery_id, now, "pending" if retry_at is not None else state, retry_at,
        error[:MAX_ERROR], fingerprint)


async def deliveries_of(db: Executor, recording_id: UUID) -> list[Delivery]:
    rows = await db.fetch(
        f"SELECT {_D_COLUMNS} FROM deliveries WHERE recording_id = $1 ORDER BY destination",
        recording_id)
    return [_delivery(r) for r in rows]


async def retry_delivery(db: Executor, recording_id: UUID, destination: str, *,
                         now: datetime) -> Delivery | None:
    """A failed (or cancelled) delivery queued again with its attempts reset."""
    row = await db.fetchrow(
        f"""UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = $3,
                   updated_at = $3
            WHERE recording_id = $1 AND destination = $2 AND state IN ('failed', 'cancelled')
            RETURNING {_D_COLUMNS}""", recording_id, destination, now)
    return None if row is None else _delivery(row)


# ------------------------------------------------------------------------------ webhooks


async def claim_webhook(db: Executor, *, endpoints: Sequence[str], now: datetime,
                        lease: timedelta) -> WebhookDelivery | None:
    row = await db.fetchrow(
        f"""UPDATE webhook_deliveries SET state = 'running', attempts = attempts + 1,
                   lease_until = $2 + $3::interval, updated_at = $2
            WHERE id = (
                SELECT id FROM webhook_deliveries
                WHERE endpoint = ANY($1::text[]) AND next_attempt_at <= $2
                  AND (state = 'pending' OR (state = 'running' AND lease_until < $2))
                ORDER BY next_attempt_at, event_seq LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {_W_COLUMNS}""", list(endpoints), now, lease)
    return None if row is None else _webhook(row)


async def webhook_done(db: Executor, webhook_id: UUID, *, now: datetime, status: int) -> None:
    await db.execute(
        """UPDATE webhook_deliveries SET state = 'delivered', delivered_at = $2, updated_at = $2,
                  last_status = $3, last_error = NULL, lease_until = NULL
           WHERE id = $1""", webhook_id, now, status)


async def webhook_failed(db: Executor, webhook_id: UUID, *, now: datetime, status: int | None,
                         error: str, retry_at: datetime | None) -> None:
    await db.execute(
        """UPDATE webhook_deliveries SET state = $3, next_attempt_at = COALESCE($4,
                  next_attempt_at), last_status = $5, last_error = $6, updated_at = $2,
                  lease_until = NULL
           WHERE id = $1""",
        webhook_id, now, "pending" if retry_at is not None else "dead", retry_at, status,
        error[:MAX_ERROR])


async def list_webhook_deliveries(db: Executor, *, state: str | None, limit: int = 100
                                  ) -> list[WebhookDelivery]:
    rows = await db.fetch(
        f"""SELECT {_W_COLUMNS} FROM webhook_deliveries
            WHERE $1::text IS NULL OR state = $1 ORDER BY created_at DESC, event_seq DESC
            LIMIT $2""", state, limit)
    return [_webhook(r) for r in rows]


async def retry_webhook(db: Executor, webhook_id: UUID, *, now: datetime
                        ) -> WebhookDelivery | None:
    row = await db.fetchrow(
        f"""UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $2,
                   updated_at = $2
            WHERE id = $1 AND state = 'dead' RETURNING {_W_COLUMNS}""", webhook_id, now)
    return None if row is None else _webhook(row)


async def metadata_documents(db: Executor, recording_id: UUID) -> list[dict[str, Any]]:
    """The rs-metadata documents of a recording as received, in order."""
    rows = await db.fetch(
        """SELECT sip_method, datamode, received_at, document FROM metadata_events
           WHERE recording_id = $1 ORDER BY id""", recording_id)
    return [dict(r) for r in rows]
