"""The metadata event log of one recording (every rs-metadata document as it arrived), read
for the participant timeline. Callers check the recording is in the reader's scope first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

__all__ = ["MAX_EVENTS", "MetadataLogEntry", "read_metadata_log"]

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection
MAX_EVENTS = 500
"""A timeline shows at most this many documents (a call with more is pathological)."""


@dataclass(frozen=True, slots=True)
class MetadataLogEntry:
    received_at: datetime
    sip_method: str
    datamode: str
    document: str


async def read_metadata_log(db: Executor, recording_id: UUID) -> list[MetadataLogEntry]:
    rows = await db.fetch(
        """SELECT received_at, sip_method, datamode, document FROM metadata_events
           WHERE recording_id = $1 ORDER BY id LIMIT $2""",
        recording_id, MAX_EVENTS)
    return [MetadataLogEntry(r["received_at"], r["sip_method"], r["datamode"], r["document"])
            for r in rows]
