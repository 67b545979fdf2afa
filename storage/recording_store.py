"""What a live recording writes to PostgreSQL, as one object with the project's own errors.

The recorder and the media service talk to the database only through this (or through the
write-behind that wraps it, storage/write_behind.py): every method either succeeds, raises
`StorageUnavailable` (the database cannot be reached now), or raises a genuine error. Each write
is idempotent, so a write that was journaled while the database was away can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from storage import recordings
from storage.audit import AuditEvent, record_audit
from storage.errors import DEFAULT_OPERATION_TIMEOUT_S, guarded
from storage.recordings import MediaResult, NewRecording, ParticipantRow, StreamRow


@dataclass(frozen=True, slots=True)
class MetadataEvent:
    """One rs-metadata document as received (RFC 7865 snapshot or partial update)."""

    op_id: UUID
    received_at: datetime
    sip_method: str
    datamode: str
    document: str


@dataclass(frozen=True, slots=True)
class SessionRows:
    """The current state derived from the metadata log and the SDP: replaces what was stored."""

    session_id: str | None
    participants: tuple[ParticipantRow, ...]
    streams: tuple[StreamRow, ...]


@dataclass(frozen=True, slots=True)
class MediaStart:
    """Before any audio is written: where the file goes and its wrapped data key."""

    file_path: str
    sample_rate: int
    channels: list[dict[str, Any]]
    master_key_id: str
    wrapped_key: bytes


class RecordingStore:
    def __init__(self, pool: asyncpg.Pool,
                 timeout: float = DEFAULT_OPERATION_TIMEOUT_S) -> None:
        self._pool = pool
        self._timeout = timeout

    async def ping(self) -> None:
        await guarded(self._pool.fetchval("SELECT 1"), self._timeout)

    # ------------------------------------------------------------ the recorder's writes

    async def open_recording(self, new: NewRecording, event: MetadataEvent | None,
                             rows: SessionRows) -> None:
        async def work() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await recordings.insert_recording(conn, new)
                await _save(conn, new.id, event, rows)

        await guarded(work(), self._timeout)

    async def save_update(self, recording_id: UUID, event: MetadataEvent | None,
                          rows: SessionRows) -> None:
        async def work() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await _save(conn, recording_id, event, rows)

        await guarded(work(), self._timeout)

    async def mark_answered(self, recording_id: UUID, dialog_id: str, at: datetime) -> None:
        await guarded(recordings.mark_answered(self._pool, recording_id, dialog_id, at),
                      self._timeout)

    async def mark_ended(self, recording_id: UUID, state: str, reason: str,
                         at: datetime) -> None:
        await guarded(recordings.mark_ended(self._pool, recording_id, state, reason, at),
                      self._timeout)

    # ------------------------------------------------------------ the media service's writes

    async def save_media_start(self, recording_id: UUID, start: MediaStart) -> None:
        await guarded(
            recordings.save_media_start(
                self._pool, recording_id, file_path=start.file_path,
                sample_rate=start.sample_rate, channels=start.channels,
                master_key_id=start.master_key_id, wrapped_key=start.wrapped_key,
            ),
            self._timeout,
        )

    async def save_media_result(self, recording_id: UUID, result: MediaResult) -> None:
        await guarded(recordings.save_media_result(self._pool, recording_id, result),
                      self._timeout)

    async def register_signing_key(self, key_id: str, node_id: str, public_key: bytes) -> None:
        await guarded(recordings.register_signing_key(self._pool, key_id, node_id, public_key),
                      self._timeout)

    async def record_audit(self, event: AuditEvent, at: datetime, event_id: UUID) -> None:
        await guarded(record_audit(self._pool, event, at, event_id), self._timeout)

    # ------------------------------------------------------------ start-up reads

    async def unfinished_media(self, node_id: str,
                               include_recording: bool = True) -> list[dict[str, Any]]:
        return await guarded(recordings.unfinished_media(self._pool, node_id,
                                                         include_recording), self._timeout)

    async def recording_key(self, recording_id: UUID) -> tuple[str, bytes] | None:
        return await guarded(recordings.get_recording_key(self._pool, recording_id),
                             self._timeout)

    async def recording_evidence(self, recording_id: UUID
                                 ) -> tuple[list[dict[str, Any]], list[str]]:
        return await guarded(recordings.recording_evidence(self._pool, recording_id),
                             self._timeout)


async def _save(conn: asyncpg.Connection, recording_id: UUID, event: MetadataEvent | None,
                rows: SessionRows) -> None:
    if event is not None:
        await recordings.add_metadata_event(conn, recording_id, event.received_at,
                                            event.sip_method, event.datamode, event.document,
                                            event.op_id)
    await recordings.save_session_state(conn, recording_id, rows.session_id, rows.participants,
                                        rows.streams)
