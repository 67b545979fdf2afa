"""Reading a recording back: the only way plaintext audio leaves an encrypted file. The caller
(API playback, verify, tests) gets a stream of authenticated plaintext; nothing is written."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from storage import recordings
from storage.keys import KeyRing
from storage.recording_file import decrypt_range


class NoRecordingToOpen(LookupError):
    """No recording has this id."""


class RecordingUnreadable(Exception):
    """No data key (erased) or no file."""


@dataclass(frozen=True, slots=True)
class OpenRecording:
    recording_id: UUID
    path: Path
    data_key: bytes
    state: str
    plaintext_bytes: int | None
    """Known once the recording is finished."""

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Plaintext bytes [start, end) of the Ogg stream, authenticated chunk by chunk."""
        with open(self.path, "rb") as f:
            yield from decrypt_range(
                f,
                recording_id=self.recording_id,
                data_key=self.data_key,
                start=start,
                end=end,
                allow_unfinished=self.state in ("recording", "offered"),
            )


async def open_recording(db: asyncpg.Pool, keys: KeyRing, recording_id: UUID) -> OpenRecording:
    row: Any = await db.fetchrow(
        "SELECT state, file_path, plaintext_bytes FROM recordings WHERE id = $1", recording_id
    )
    if row is None:
        raise NoRecordingToOpen(str(recording_id))
    key = await recordings.get_recording_key(db, recording_id)
    if key is None or not row["file_path"]:
        raise RecordingUnreadable("the recording has no audio or its key was destroyed")
    data_key = keys.unwrap(key[1], recording_id)
    return OpenRecording(recording_id, Path(row["file_path"]), data_key, row["state"],
                         row["plaintext_bytes"])


async def read_all(db: asyncpg.Pool, keys: KeyRing, recording_id: UUID) -> bytes:
    """The whole plaintext (tests and small exports; playback streams instead)."""
    opened = await open_recording(db, keys, recording_id)
    return b"".join(opened.read())
