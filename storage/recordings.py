"""The recordings repository: every read and write of recording sessions goes through here.

Takes plain rows, knows nothing of SIP; the SIPREC service maps its session state onto them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

Executor = asyncpg.Pool | asyncpg.Connection  # both have execute/fetch


@dataclass(frozen=True, slots=True)
class NewRecording:
    id: UUID
    node_id: str
    call_id: str
    sip_session_id: str | None
    started_at: datetime
    transport: str
    src_address: str


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    participant_id: str
    aor: str | None
    aor_raw: str | None
    name: str | None
    joined_at: datetime | None
    left_at: datetime | None
    present: bool


@dataclass(frozen=True, slots=True)
class StreamRow:
    m_index: int
    label: str | None
    stream_id: str | None
    kind: str
    accepted: bool
    codec: str | None
    telephone_event: int | None
    srtp_suite: str | None
    local_port: int | None
    remote_address: str | None
    remote_port: int | None
    direction: str | None
    senders: tuple[str, ...]


async def insert_recording(db: Executor, rec: NewRecording) -> None:
    await db.execute(
        """INSERT INTO recordings (id, node_id, call_id, sip_session_id, state, started_at,
                                   transport, src_address)
           VALUES ($1, $2, $3, $4, 'offered', $5, $6, $7)""",
        rec.id,
        rec.node_id,
        rec.call_id,
        rec.sip_session_id,
        rec.started_at,
        rec.transport,
        rec.src_address,
    )


async def mark_answered(db: Executor, recording_id: UUID, dialog_id: str, at: datetime) -> None:
    await db.execute(
        """UPDATE recordings SET state = 'recording', dialog_id = $2, answered_at = $3
           WHERE id = $1 AND state = 'offered'""",
        recording_id,
        dialog_id,
        at,
    )


async def mark_ended(
    db: Executor, recording_id: UUID, state: str, reason: str, at: datetime
) -> None:
    await db.execute(
        """UPDATE recordings SET state = $2, end_reason = $3, ended_at = $4
           WHERE id = $1 AND state IN ('offered', 'recording')""",
        recording_id,
        state,
        reason,
        at,
    )


async def close_open_recordings(db: Executor, node_id: str, at: datetime) -> list[UUID]:
    """Start-up: sessions this node left open when it stopped are interrupted, not lost."""
    rows = await db.fetch(
        """UPDATE recordings
           SET state = CASE WHEN state = 'offered' THEN 'failed' ELSE 'interrupted' END,
               end_reason = 'server restarted', ended_at = $2
           WHERE node_id = $1 AND state IN ('offered', 'recording') RETURNING id""",
        node_id,
        at,
    )
    return [row["id"] for row in rows]


async def add_metadata_event(
    db: Executor,
    recording_id: UUID,
    received_at: datetime,
    sip_method: str,
    datamode: str,
    document: str,
) -> None:
    await db.execute(
        """INSERT INTO metadata_events (recording_id, received_at, sip_method, datamode, document)
           VALUES ($1, $2, $3, $4, $5)""",
        recording_id,
        received_at,
        sip_method,
        datamode,
        document,
    )


async def save_session_state(
    db: asyncpg.Connection,
    recording_id: UUID,
    session_id: str | None,
    participants: Sequence[ParticipantRow],
    streams: Sequence[StreamRow],
) -> None:
    """Replace the derived current state of one recording (call inside a transaction)."""
    await db.execute(
        "UPDATE recordings SET session_id = COALESCE($2, session_id) WHERE id = $1",
        recording_id,
        session_id,
    )
    await db.execute("DELETE FROM participants WHERE recording_id = $1", recording_id)
    await db.executemany(
        """INSERT INTO participants (recording_id, participant_id, aor, aor_raw, name,
                                     joined_at, left_at, present)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [
            (recording_id, p.participant_id, p.aor, p.aor_raw, p.name, p.joined_at, p.left_at,
             p.present)
            for p in participants
        ],
    )
    await db.execute("DELETE FROM streams WHERE recording_id = $1", recording_id)
    await db.executemany(
        """INSERT INTO streams (recording_id, m_index, label, stream_id, kind, accepted, codec,
                                telephone_event, srtp_suite, local_port, remote_address,
                                remote_port, direction, senders)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
        [
            (recording_id, s.m_index, s.label, s.stream_id, s.kind, s.accepted, s.codec,
             s.telephone_event, s.srtp_suite, s.local_port, s.remote_address, s.remote_port,
             s.direction, list(s.senders))
            for s in streams
        ],
    )


async def get_recording(db: Executor, recording_id: UUID) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM recordings WHERE id = $1", recording_id)
    if row is None:
        return None
    result = dict(row)
    result["participants"] = [
        dict(r)
        for r in await db.fetch(
            "SELECT * FROM participants WHERE recording_id = $1 ORDER BY participant_id",
            recording_id,
        )
    ]
    result["streams"] = [
        dict(r)
        for r in await db.fetch(
            "SELECT * FROM streams WHERE recording_id = $1 ORDER BY m_index", recording_id
        )
    ]
    result["metadata_events"] = [
        dict(r)
        for r in await db.fetch(
            "SELECT * FROM metadata_events WHERE recording_id = $1 ORDER BY id", recording_id
        )
    ]
    return result


async def find_by_call_id(db: Executor, call_id: str) -> list[UUID]:
    rows = await db.fetch(
        "SELECT id FROM recordings WHERE call_id = $1 ORDER BY started_at", call_id
    )
    return [row["id"] for row in rows]
