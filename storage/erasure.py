"""Erasure of a recording (GDPR art. 17, retention expiry) by crypto-shredding.

The order is what makes it an erasure of every copy:

1. In one committed transaction: the wrapped data key row is deleted, the erasure is stamped
   (when, by whom, why) and written to the audit trail. From this commit on, the media file —
   and every copy of it in backups or replicas — is ciphertext nobody can open: the data key
   existed nowhere else.
2. The file and its waveform peaks are unlinked (hygiene; the key of both is already gone).
3. The personal metadata goes: participants, the metadata event log (the rs-metadata XML) and
   what was extracted from it (src_metadata), annotations (tags, comments, flags),
   streams' remote addresses and senders, Call-ID, session ids, SRC address, dialog id, the
   signed summary (it names the Call-ID) and the channels' participant ids. What stays is a
   tombstone: id, start/end times, duration, state 'erased', erased_at, erased_by, reason.

A recording that an active legal hold keeps is not erased by any caller: `RecordingHeld` names
the matters (storage/holds.py; checked under the lock that orders holds and erasures).

A crash between the steps leaves `erased_at` set on a row not yet 'erased';
`erase_recording` finishes it when called again (`unfinished_erasures` lists them), so the API,
a retention job and a start-up sweep all use the same function.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from storage.audit import AuditEvent, record_audit
from storage.holds import held_matters, lock_against_new_holds
from storage.peaks import remove_peaks

__all__ = [
    "Erasure",
    "ErasureError",
    "NoRecordingToErase",
    "RecordingActive",
    "RecordingHeld",
    "Tombstone",
    "erase_recording",
    "unfinished_erasures",
]

MAX_REASON_LENGTH = 500


class ErasureError(Exception):
    """A recording that cannot be erased (see the subclasses)."""


class NoRecordingToErase(ErasureError):
    """No recording has this id."""


class RecordingActive(ErasureError):
    """Still being recorded: stop the call (or wait for its end) first."""


class RecordingHeld(ErasureError):
    """An active legal hold keeps the recording."""

    def __init__(self, recording_id: UUID, matters: list[str]) -> None:
        super().__init__(f"recording {recording_id} is under legal hold: {', '.join(matters)}")
        self.matters = matters


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What remains of an erased recording: nothing about the people in it."""

    recording_id: UUID
    started_at: datetime
    ended_at: datetime | None
    duration_ms: int | None
    erased_at: datetime
    erased_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class Erasure:
    tombstone: Tombstone
    already_erased: bool
    """The recording had been erased before this call: nothing changed."""


def _tombstone(row: Any) -> Tombstone:
    return Tombstone(row["id"], row["started_at"], row["ended_at"], row["duration_ms"],
                     row["erased_at"], row["erased_by"], row["erasure_reason"] or "")


async def erase_recording(
    db: asyncpg.Pool,
    recording_id: UUID,
    *,
    actor: str,
    reason: str,
    now: datetime,
    source: str | None = None,
) -> Erasure:
    """Erase one recording (see the module docstring); harmless on an erased one.

    NoRecordingToErase, RecordingActive (state offered/recording), RecordingHeld (a legal hold
    keeps it); ValueError for an empty or over-long reason."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_LENGTH or "\x00" in reason:
        raise ValueError(f"a reason of 1 to {MAX_REASON_LENGTH} characters is required")
    async with db.acquire() as conn:
        async with conn.transaction():
            # Before the row lock: a hold being created locks in the other order.
            await lock_against_new_holds(conn)
            row = await conn.fetchrow(
                """SELECT id, state, file_path, started_at, ended_at, duration_ms, erased_at,
                          erased_by, erasure_reason
                   FROM recordings WHERE id = $1 FOR UPDATE""",
                recording_id,
            )
            if row is None:
                raise NoRecordingToErase(str(recording_id))
            if row["state"] == "erased":
                await record_audit(conn, _event(actor, recording_id, source, reason,
                                                already_erased=True), now)
                return Erasure(_tombstone(row), already_erased=True)
            if row["state"] in ("offered", "recording"):
                raise RecordingActive(f"recording {recording_id} is {row['state']}")
            if row["erased_at"] is None:  # a resumed erasure has no key left to keep
                matters = await held_matters(conn, recording_id)
                if matters:
                    raise RecordingHeld(recording_id, matters)
            # Step 1: the key, in its own committed transaction, with the audit event.
            await conn.execute("DELETE FROM recording_keys WHERE recording_id = $1", recording_id)
            if row["erased_at"] is None:  # a resumed erasure keeps its first stamp
                await conn.execute(
                    """UPDATE recordings SET erased_at = $2, erased_by = $3, erasure_reason = $4
                       WHERE id = $1""",
                    recording_id, now, actor, reason,
                )
            await record_audit(conn, _event(actor, recording_id, source, reason,
                                            already_erased=False), now)
        # Step 2: the file — only ever this recording's own file, whatever the column says.
        path = Path(row["file_path"]) if row["file_path"] else None
        if path is not None and path.name == f"{recording_id}.srec":
            remove_peaks(path)
            _unlink(path)
        # Step 3: the personal metadata.
        async with conn.transaction():
            await conn.execute("DELETE FROM participants WHERE recording_id = $1", recording_id)
            await conn.execute("DELETE FROM metadata_events WHERE recording_id = $1",
                               recording_id)
            await conn.execute("DELETE FROM annotations WHERE recording_id = $1", recording_id)
            await conn.execute(
                """UPDATE streams SET remote_address = NULL, remote_port = NULL, senders = '{}'
                   WHERE recording_id = $1""",
                recording_id,
            )
            channels = await conn.fetchval(
                "SELECT channels FROM recordings WHERE id = $1", recording_id
            )
            final = await conn.fetchrow(
                """UPDATE recordings SET state = 'erased', call_id = NULL, dialog_id = NULL,
                       sip_session_id = NULL, session_id = NULL, src_address = NULL,
                       summary = NULL, signature = NULL, file_path = NULL,
                       plaintext_sha256 = NULL, ciphertext_sha256 = NULL, channels = $2,
                       src_metadata = '{}'
                   WHERE id = $1
                   RETURNING id, started_at, ended_at, duration_ms, erased_at, erased_by,
                             erasure_reason""",
                recording_id,
                _without_participants(channels),
            )
    return Erasure(_tombstone(final), already_erased=False)


def _event(actor: str, recording_id: UUID, source: str | None, reason: str, *,
           already_erased: bool) -> AuditEvent:
    return AuditEvent(
        actor=actor,
        action="recording.erase",
        target=str(recording_id),
        source=source,
        details={"reason": reason, "already_erased": already_erased,
                 "method": "data key destroyed"},
    )


def _without_participants(channels: Any) -> Any:
    if not isinstance(channels, list):
        return []
    return [
        {**c, "participant_ids": []} if isinstance(c, dict) else c for c in channels
    ]


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    # Make the unlink durable; a failure here changes nothing about the erasure.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def unfinished_erasures(db: asyncpg.Pool | asyncpg.Connection) -> list[UUID]:
    """Recordings whose key is destroyed but whose erasure did not complete (a crash)."""
    rows = await db.fetch(
        "SELECT id FROM recordings WHERE erased_at IS NOT NULL AND state <> 'erased'"
    )
    return [row["id"] for row in rows]
