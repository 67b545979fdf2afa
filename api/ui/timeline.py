"""The participant timeline of a recording: the metadata event log replayed document by document
(siprec_server.siprec.metadata_state), each change of who is present and who sends on which
recorded channel turned into one line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from siprec_server.siprec.metadata import MetadataError, parse_metadata
from siprec_server.siprec.metadata_state import RecordingMetadata, apply_metadata
from storage.metadata_log import MetadataLogEntry

__all__ = ["TimelineEntry", "participant_timeline"]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: datetime
    participant: str
    """Name, else address, else the metadata's participant id."""
    what: str
    """"joined", "left", "sends on channel 2", "stopped sending on channel 2", ..."""
    channel: int | None = None


def _who(participant: Any) -> str:
    return participant.name or participant.aor or f"participant {participant.id}"


def _labels(state: RecordingMetadata, participant: Any) -> set[str]:
    labels = set()
    for stream_id in participant.send:
        stream = state.streams.get(stream_id)
        if stream is not None and stream.label is not None:
            labels.add(stream.label)
    return labels


def _channel_words(label: str, channels: Mapping[str, int]) -> tuple[str, int | None]:
    channel = channels.get(label)
    if channel is None:
        return f"stream {label} (not recorded)", None
    return f"channel {channel + 1}", channel


def participant_timeline(log: Sequence[MetadataLogEntry],
                         channels: Sequence[Mapping[str, Any]]) -> tuple[list[TimelineEntry], int]:
    """The timeline, and how many documents could not be read (they are skipped)."""
    by_label = {str(c["label"]): int(c["index"]) for c in channels
                if c.get("label") is not None and c.get("index") is not None}
    entries: list[TimelineEntry] = []
    unreadable = 0
    state: RecordingMetadata | None = None
    for entry in log:
        try:
            doc = parse_metadata(entry.document.encode("utf-8"))
        except (MetadataError, ValueError):
            unreadable += 1
            continue
        before = state
        state = apply_metadata(state, doc, entry.received_at)
        at = entry.received_at
        for pid, now in state.participants.items():
            old = before.participants.get(pid) if before is not None else None
            was_present = old is not None and old.present
            if now.present and not was_present:
                entries.append(TimelineEntry(now.joined_at or at, _who(now), "joined"))
            elif was_present and not now.present:
                entries.append(TimelineEntry(now.left_at or at, _who(now), "left"))
            sent = _labels(before, old) if before is not None and old is not None else set()
            sends = _labels(state, now) if now.present else set()
            for label in sorted(sends - sent):
                words, channel = _channel_words(label, by_label)
                entries.append(TimelineEntry(at, _who(now), f"sends on {words}", channel))
            for label in sorted(sent - sends):
                words, channel = _channel_words(label, by_label)
                entries.append(TimelineEntry(at, _who(now), f"stopped sending on {words}",
                                             channel))
    return entries, unreadable
