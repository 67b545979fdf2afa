"""The recordings repository: every read and write of recording sessions goes through here.

Takes plain rows, knows nothing of SIP; the SIPREC service maps its session state onto them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from storage.database import transaction

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection  # both have execute/fetch




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
    number: str | None = None
    """The AOR's phone number, normalised (siprec_server.numbers), for search and scopes."""


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
    op_id: UUID | None = None,
) -> None:
    """Append one metadata event; a replayed write (same op_id) adds nothing."""
    await db.execute(
        """INSERT INTO metadata_events (recording_id, received_at, sip_method, datamode, document,
                                        op_id)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (op_id) DO NOTHING""",
        recording_id,
        received_at,
        sip_method,
        datamode,
        document,
        op_id,
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
                                     joined_at, left_at, present, number)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [
            (recording_id, p.participant_id, p.aor, p.aor_raw, p.name, p.joined_at, p.left_at,
             p.present, p.number)
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


async def count_by_state(db: Executor) -> dict[str, int]:
    """How many recordings are in each state (states without any are absent)."""
    rows = await db.fetch("SELECT state, count(*) AS n FROM recordings GROUP BY state")
    return {row["state"]: row["n"] for row in rows}


async def find_by_call_id(db: Executor, call_id: str) -> list[UUID]:
    rows = await db.fetch(
        "SELECT id FROM recordings WHERE call_id = $1 ORDER BY started_at", call_id
    )
    return [row["id"] for row in rows]


# ------------------------------------------------------------------------------ recorded media


@dataclass(frozen=True, slots=True)
class MediaResult:
    """What a finished (or recovered) recording file contained, and its signature."""

    duration_ms: int
    plaintext_sha256: bytes
    ciphertext_sha256: bytes
    plaintext_bytes: int
    ciphertext_bytes: int
    pauses: list[dict[str, Any]]
    dtmf_events: int
    recovered: bool
    summary: dict[str, Any]
    signature: bytes
    signing_key_id: str
    stream_stats: dict[int, dict[str, int]]
    """m-line index → packet statistics."""
    no_media: bool = False
    """No stream delivered a single packet: not a good 0-second recording."""


async def save_media_start(
    db: Executor,
    recording_id: UUID,
    *,
    file_path: str,
    sample_rate: int,
    channels: list[dict[str, Any]],
    master_key_id: str,
    wrapped_key: bytes,
) -> None:
    """Before any audio is written: the wrapped data key and where the file goes. Replaying it
    (the write-behind journal) changes nothing."""
    async with transaction(db) as conn:
        await conn.execute(
            """INSERT INTO recording_keys (recording_id, master_key_id, wrapped_key)
               VALUES ($1, $2, $3) ON CONFLICT (recording_id) DO NOTHING""",
            recording_id,
            master_key_id,
            wrapped_key,
        )
        await conn.execute(
            """UPDATE recordings SET file_path = $2, sample_rate = $3, channels = $4
               WHERE id = $1""",
            recording_id,
            file_path,
            sample_rate,
            channels,
        )
        for channel in channels:
            await conn.execute(
                "UPDATE streams SET channel = $3 WHERE recording_id = $1 AND m_index = $2",
                recording_id,
                channel["m_index"],
                channel["index"],
            )


async def save_media_result(db: Executor, recording_id: UUID, result: MediaResult) -> None:
    async with transaction(db) as conn:
        await conn.execute(
            """UPDATE recordings SET duration_ms = $2, plaintext_sha256 = $3,
                   ciphertext_sha256 = $4, plaintext_bytes = $5, ciphertext_bytes = $6,
                   pauses = $7, dtmf_events = $8, recovered = $9, summary = $10,
                   signature = $11, signing_key_id = $12, no_media = $13
               WHERE id = $1""",
            recording_id,
            result.duration_ms,
            result.plaintext_sha256,
            result.ciphertext_sha256,
            result.plaintext_bytes,
            result.ciphertext_bytes,
            result.pauses,
            result.dtmf_events,
            result.recovered,
            result.summary,
            result.signature,
            result.signing_key_id,
            result.no_media,
        )
        for m_index, stats in result.stream_stats.items():
            await conn.execute(
                "UPDATE streams SET stats = $3 WHERE recording_id = $1 AND m_index = $2",
                recording_id,
                m_index,
                stats,
            )


async def get_recording_key(db: Executor, recording_id: UUID) -> tuple[str, bytes] | None:
    row = await db.fetchrow(
        "SELECT master_key_id, wrapped_key FROM recording_keys WHERE recording_id = $1",
        recording_id,
    )
    return (row["master_key_id"], bytes(row["wrapped_key"])) if row else None


async def register_signing_key(db: Executor, key_id: str, node_id: str, public_key: bytes) -> None:
    await db.execute(
        """INSERT INTO signing_keys (key_id, node_id, public_key) VALUES ($1, $2, $3)
           ON CONFLICT (key_id) DO NOTHING""",
        key_id,
        node_id,
        public_key,
    )


async def get_signing_key(db: Executor, key_id: str) -> bytes | None:
    value = await db.fetchval("SELECT public_key FROM signing_keys WHERE key_id = $1", key_id)
    return bytes(value) if value is not None else None


async def unfinished_media(db: Executor, node_id: str,
                           include_recording: bool = True) -> list[dict[str, Any]]:
    """Recordings of this node whose file was never sealed: those it was writing when it
    stopped (start-up recovery, `include_recording`), and those that ended without their final
    chunk (the disk was full)."""
    rows = await db.fetch(
        """SELECT id, call_id, started_at, file_path, channels, sample_rate FROM recordings
           WHERE node_id = $1 AND file_path IS NOT NULL AND signature IS NULL
             AND (state = 'interrupted' OR ($2 AND state = 'recording'))""",
        node_id, include_recording,
    )
    return [dict(r) for r in rows]


async def recording_ids(db: Executor) -> list[UUID]:
    rows = await db.fetch(
        "SELECT id FROM recordings WHERE file_path IS NOT NULL ORDER BY started_at"
    )
    return [r["id"] for r in rows]


async def recording_evidence(db: Executor, recording_id: UUID
                             ) -> tuple[list[dict[str, Any]], list[str]]:
    """What a recording's signed summary covers from the database: its participants (as
    signed) and the SHA-256 of each metadata event in order."""
    from storage.recording_summary import metadata_event_digest, participant_entries

    participants = await db.fetch(
        """SELECT participant_id, aor, name, present, joined_at, left_at FROM participants
           WHERE recording_id = $1""", recording_id)
    events = await db.fetch(
        """SELECT received_at, sip_method, datamode, document FROM metadata_events
           WHERE recording_id = $1 ORDER BY id""", recording_id)
    return (participant_entries(dict(r) for r in participants),
            [metadata_event_digest(e["received_at"], e["sip_method"], e["datamode"],
                                   e["document"]) for e in events])
