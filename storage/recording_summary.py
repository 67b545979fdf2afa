"""What a finished recording's signature covers, built in one place for the signer (the media
service) and the verifier (storage/verification.py).

The signed summary holds the file's hashes and sizes, the channel map, the pauses, the stream
statistics, the participants (id, AOR, name, presence and times) and the SHA-256 of every
metadata event in the order received. So editing a participant, adding, removing or changing a
metadata event, or moving a pause in the database is caught by `verify`, as is any change to the
file. Its own SHA-256 (`summary_digest`) is written to the audit trail in `recording.sealed`
(and the start's in `recording.started`), whose chain is anchored outside the database by signed
checkpoints: a summary re-signed with a key inserted into the database differs from the one the
trail recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from storage.signing import canonical_summary_bytes

__all__ = [
    "FORMAT",
    "build_summary",
    "metadata_event_digest",
    "participant_entries",
    "start_summary",
    "summary_digest",
]

FORMAT = "ogg-opus/siprec-aead-v1"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def metadata_event_digest(received_at: datetime, sip_method: str, datamode: str,
                          document: str) -> str:
    """SHA-256 (hex) of one metadata event as stored (metadata_events row)."""
    record = {"received_at": _time(received_at), "sip_method": sip_method,
              "datamode": datamode, "document": document}
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


def participant_entries(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Participants as signed: from ParticipantRow objects or participants rows alike."""

    def get(row: Any, name: str, column: str | None = None) -> Any:
        if isinstance(row, Mapping):
            return row[column or name]
        return getattr(row, name)

    entries = [{
        "id": get(row, "participant_id"),
        "aor": get(row, "aor"),
        "name": get(row, "name"),
        "present": bool(get(row, "present")),
        "joined_at": _time(get(row, "joined_at")),
        "left_at": _time(get(row, "left_at")),
    } for row in rows]
    return sorted(entries, key=lambda e: str(e["id"]))


def summary_digest(summary: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the summary's canonical bytes: what the audit trail records."""
    return hashlib.sha256(canonical_summary_bytes(summary)).hexdigest()


def start_summary(*, recording_id: UUID, node_id: str, call_id: str | None,
                  started_at: datetime, participants: list[dict[str, Any]],
                  metadata_sha256: Sequence[str], master_key_id: str,
                  data_key_id: str) -> dict[str, Any]:
    """What `recording.started` vouches for: who was on the call when recording began, under
    which keys."""
    return {"recording_id": str(recording_id), "node_id": node_id, "call_id": call_id,
            "started_at": _time(started_at), "participants": participants,
            "metadata_sha256": list(metadata_sha256), "master_key_id": master_key_id,
            "data_key_id": data_key_id}


def build_summary(
    *, recording_id: UUID, node_id: str, call_id: str | None, started_at: datetime,
    ended_at: datetime, duration_ms: int, channels: list[dict[str, Any]],
    plaintext_sha256: bytes, ciphertext_sha256: bytes, plaintext_bytes: int,
    ciphertext_bytes: int, recovered: bool, pauses: list[dict[str, Any]], dtmf_events: int,
    streams: Mapping[int, Mapping[str, int]], participants: list[dict[str, Any]],
    metadata_sha256: Sequence[str], no_media: bool = False,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "recording_id": str(recording_id),
        "node_id": node_id,
        "call_id": call_id,
        "started_at": _time(started_at),
        "ended_at": _time(ended_at),
        "duration_ms": duration_ms,
        "channels": channels,
        "plaintext_sha256": plaintext_sha256.hex(),
        "ciphertext_sha256": ciphertext_sha256.hex(),
        "plaintext_bytes": plaintext_bytes,
        "ciphertext_bytes": ciphertext_bytes,
        "recovered": recovered,
        "pauses": pauses,
        "dtmf_events": dtmf_events,
        "no_media": no_media,
        "streams": {str(k): dict(v) for k, v in sorted(streams.items())},
        "participants": participants,
        "metadata_sha256": list(metadata_sha256),
    }
